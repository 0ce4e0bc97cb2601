"""GDPR erasure through the running suite under mutual TLS (issue 16, privacy controls).

Users X and Y send requests through Envoy; `sluice privacy erase --user X` (as the
operator) deletes X's traces in telemetry and X's cached answers in the router, Y's stay;
other identities are refused; every erasure and refusal is in the audit log.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest

from sluice.core.audit import read_records
from sluice.core.erasure import user_digest
from sluice.router.v1 import admin_pb2, admin_pb2_grpc
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.e2e.conftest import BIN, DEV_KEY, RunningSuite, start_suite

pytestmark = pytest.mark.e2e

FAST_MODEL = {
    "backends": {
        "simulated": {"time_to_first_token_ms": 5, "tokens_per_second": 2000, "answer_tokens": 8}
    }
}


def chat(suite: RunningSuite, user: str, prompt: str) -> None:
    answer = httpx.post(
        f"{suite.edge}/v1/chat/completions",
        headers={"authorization": f"Bearer {DEV_KEY}"},
        json={
            "model": "default",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 8,
            "user": user,
        },
        timeout=20,
    )
    assert answer.status_code == 200, answer.text


async def traces_of(suite: RunningSuite, user: str) -> list[str]:
    async with suite.channel("telemetry", "operator") as channel:
        found = await telemetry_pb2_grpc.TelemetryServiceStub(channel).SearchTraces(
            telemetry_pb2.SearchTracesRequest(attributes={"user_id": user}), timeout=5
        )
    return [t.trace_id for t in found.traces]


async def wait_for_traces(suite: RunningSuite, user: str, count: int) -> list[str]:
    deadline = time.monotonic() + 15
    while True:
        found = await traces_of(suite, user)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_erase_user_removes_x_keeps_y_and_refuses_other_identities(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit"
    with start_suite(
        tmp_path,
        security={"mtls": True},
        audit={"enabled": True, "directory": str(audit)},
        provider=FAST_MODEL,
    ) as suite:
        for user, prompt in (("user-x", "first"), ("user-x", "second"), ("user-y", "third")):
            chat(suite, user, prompt)
        assert len(await wait_for_traces(suite, "user-x", 2)) == 2
        y_traces = await wait_for_traces(suite, "user-y", 1)
        assert len(y_traces) == 1

        # Other identities may not erase (nor may Envoy reach the router's admin service).
        async with suite.channel("telemetry", "router") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await telemetry_pb2_grpc.TelemetryServiceStub(channel).EraseUser(
                    telemetry_pb2.EraseUserRequest(user_id="user-x"), timeout=5
                )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with suite.channel("router", "envoy") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin_pb2_grpc.RouterAdminServiceStub(channel).EraseUser(
                    admin_pb2.EraseUserRequest(user_id="user-x"), timeout=5
                )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

        assert suite.certs is not None
        erased = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "sluice"), "privacy", "erase", "--user", "user-x",
             "--config", str(tmp_path / "sluice.yaml"), "--certs", str(suite.certs)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert erased.returncode == 0, erased.stderr
        assert f"127.0.0.1:{suite.ports['telemetry']}: 2 traces" in erased.stdout
        assert f"127.0.0.1:{suite.ports['router']}: 2 cached answers deleted" in erased.stdout

        assert await traces_of(suite, "user-x") == []
        assert await traces_of(suite, "user-y") == y_traces
        # Y's cached answer is still there: erasing Y finds exactly it.
        async with suite.channel("router", "operator") as channel:
            left = await admin_pb2_grpc.RouterAdminServiceStub(channel).EraseUser(
                admin_pb2.EraseUserRequest(user_id="user-y"), timeout=5
            )
        assert left.cache_entries_deleted == 1

        await asyncio.sleep(0.5)  # the audit writer thread
        records = [
            record
            for part in ("telemetry", "router")
            for record in read_records(audit / f"{part}.jsonl")
            if record.get("kind") == "admin"
        ]
    erasures = [r for r in records if r["action"] == "privacy.erased"]
    assert {(r["service"], r["actor"], r["target"]) for r in erasures} == {
        ("telemetry", "operator", f"user {user_digest('user-x')}"),
        ("router", "operator", f"user {user_digest('user-x')}"),
        ("router", "operator", f"user {user_digest('user-y')}"),
    }
    refusals = {(r["actor"], r["target"]) for r in records if r["action"] == "call.refused"}
    assert ("router", "/sluice.telemetry.v1.TelemetryService/EraseUser") in refusals
    assert ("envoy", "/sluice.router.v1.RouterAdminService/EraseUser") in refusals
    assert "user-x" not in json.dumps(records)
