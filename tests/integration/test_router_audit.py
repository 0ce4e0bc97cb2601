"""The router's audit log: one record per authenticated request (issue 16, audit log).

Real limiter, provider and router; the router writes `<audit.directory>/router.jsonl`
(core/audit.py), which the test reads back after stopping it (stopping flushes).
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.core.audit import read_records
from sluice.router.v1 import router_pb2
from tests.support import API_KEY_ID, AUTH, ServiceStack, collect, start_suite

SECRET_PROMPT = "my card number is 4111 1111 1111 1111"


def request(model: str = "default") -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model, messages=[common_pb2.Message(role="user", content=SECRET_PROMPT)]
    )


async def test_each_authenticated_request_is_audited_without_its_text(
    stack: ServiceStack, tmp_path: Path
) -> None:
    audit = tmp_path / "audit"
    price = {"input_per_million": 1_000_000.0, "output_per_million": 2_000_000.0}
    suite = await start_suite(
        stack,
        router={
            "audit": {"enabled": True, "directory": str(audit)},
            "budgets": {"prices": {"default": price}},
        },
    )
    ok = await collect(
        suite.router_stub.Generate(
            request(), metadata=(*AUTH, ("x-request-id", "audit-ok-1")), timeout=20
        )
    )
    answer = "".join(e.data.text for e in ok if e.HasField("data"))
    usage = ok[-1].complete.usage
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await collect(suite.router_stub.Generate(request("nope"), metadata=AUTH, timeout=20))
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await collect(suite.router_stub.Generate(request(), timeout=20))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await stack.stop(suite.router)

    text = (audit / "router.jsonl").read_text()
    assert SECRET_PROMPT not in text and "4111" not in text
    assert answer and answer not in text
    first, second = read_records(audit / "router.jsonl")  # none for the unauthenticated call
    assert first["kind"] == "request"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.+", str(first["time"]))
    assert (first["key_id"], first["tenant"], first["model"], first["outcome"]) == (
        API_KEY_ID,
        "default",
        "default",
        "ok",
    )
    assert (first["input_tokens"], first["output_tokens"]) == (
        usage.input_tokens,
        usage.output_tokens,
    )
    assert first["cost"] == pytest.approx(usage.input_tokens + 2 * usage.output_tokens)
    assert first["request_id"] == "audit-ok-1"
    assert first["trace_id"] == ""  # tracing is off here: no trace to point at
    assert (second["model"], second["outcome"], second["cost"]) == (
        "nope",
        "VALIDATION_ERROR",
        0.0,
    )
    assert second["request_id"] and second["request_id"] != first["request_id"]
