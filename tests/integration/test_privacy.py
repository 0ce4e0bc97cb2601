"""Privacy with real services (issue 16): redaction of received and exported spans,
and erasure of a user's traces (telemetry) and cached answers (router, memory and
Redis), each erasure audited."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common

from sluice.core.audit import read_records
from sluice.core.erasure import user_digest
from sluice.core.errors import InternalError
from sluice.core.privacy import CARD, EMAIL, IP, PHONE
from sluice.core.telemetry.error_reporting import ErrorReporter, ErrorReportingSettings
from sluice.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2
from sluice.telemetry.service import TelemetryHost
from sluice.telemetry.v1 import telemetry_pb2
from tests.integration.test_error_reporting import Capture, sentry  # noqa: F401 (fixture)
from tests.integration.test_telemetry import export_request
from tests.integration.test_telemetry_pipeline import span, start, stubs
from tests.support import (
    AUTH,
    RedisProcess,
    ServiceStack,
    collect,
    error_info,
    eventually,
    start_suite,
    tracing_to,
)


async def test_received_spans_are_redacted_when_the_option_is_on(stack: ServiceStack) -> None:
    host = await start(stack, privacy={"redact_pii": True})
    receiver, queries = stubs(stack, host)
    trace_id = os.urandom(16)
    sent = span(trace_id, attributes={"client.address": "203.0.113.7", "user_id": "u-1"})
    sent.events.add(
        name="note",
        attributes=[
            otlp_common.KeyValue(
                key="who", value=otlp_common.AnyValue(string_value="ann@example.com")
            )
        ],
    )
    sent.status.message = "call +1 415 555 0100"
    await receiver.Export(export_request("envoy", sent))

    got = await eventually(
        lambda: queries.SearchTraces(telemetry_pb2.SearchTracesRequest()),
        lambda found: len(found.traces) == 1,
    )
    assert got.traces[0].trace_id == trace_id.hex()
    (read,) = (await queries.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=trace_id.hex()))).spans
    assert read.attributes["client.address"] == IP
    assert read.attributes["user_id"] == "u-1"
    assert read.status_message == f"call {PHONE}"
    assert isinstance(host, TelemetryHost)
    (held,) = host.pipeline.store.get(trace_id)
    assert held.span.events[0].attributes[0].value.string_value == EMAIL


async def test_erase_user_deletes_stored_and_pending_traces_and_audits(
    stack: ServiceStack, tmp_path: Path
) -> None:
    audit = tmp_path / "audit"
    host = await start(
        stack,
        audit={"enabled": True, "directory": str(audit)},
        sampling={"keep_ratio": 1.0, "decision_wait_s": 0.05},
    )
    assert isinstance(host, TelemetryHost)
    receiver, queries = stubs(stack, host)
    x_stored, y_stored = os.urandom(16), os.urandom(16)
    root = os.urandom(8)
    # X's trace: the router's span names the user, the provider's child does not.
    await receiver.Export(
        export_request("router", span(x_stored, span_id=root, attributes={"user_id": "x"}))
    )
    await receiver.Export(export_request("provider", span(x_stored, parent=root)))
    await receiver.Export(export_request("router", span(y_stored, attributes={"user_id": "y"})))
    await eventually(
        lambda: queries.SearchTraces(telemetry_pb2.SearchTracesRequest()),
        lambda found: len(found.traces) == 2,
    )
    # One more trace of X still waiting for its sampling decision.
    host.pipeline.sampler._wait = 3600.0
    x_pending = os.urandom(16)
    await receiver.Export(export_request("router", span(x_pending, attributes={"user_id": "x"})))

    async def pending() -> int:
        return len(host.pipeline.sampler.pending(x_pending))

    assert await eventually(pending, bool) == 1

    erased = await queries.EraseUser(telemetry_pb2.EraseUserRequest(user_id="x"))

    assert (erased.traces_deleted, erased.spans_deleted) == (2, 3)
    for gone in (x_stored, x_pending):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await queries.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=gone.hex()))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    by_user = await queries.SearchTraces(
        telemetry_pb2.SearchTracesRequest(attributes={"user_id": "y"})
    )
    assert [t.trace_id for t in by_user.traces] == [y_stored.hex()]
    # A late span of an erased trace is dropped, not stored again.
    host.pipeline.sampler._wait = 0.05
    await receiver.Export(export_request("limiter", span(x_stored, parent=root)))
    host.pipeline.decide(flush=True)
    assert host.pipeline.store.get(x_stored) == []

    again = await queries.EraseUser(telemetry_pb2.EraseUserRequest(user_id="x"))
    assert again.traces_deleted == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queries.EraseUser(telemetry_pb2.EraseUserRequest(user_id=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "VALIDATION_ERROR"

    await stack.stop(host)
    records = [
        r for r in read_records(audit / "telemetry.jsonl") if r["action"] == "privacy.erased"
    ]
    assert [r["detail"] for r in records] == [
        "traces_deleted=2 spans_deleted=3",
        "traces_deleted=0 spans_deleted=0",
    ]
    assert all(r["target"] == f"user {user_digest('x')}" for r in records)
    assert '"x"' not in (audit / "telemetry.jsonl").read_text()


def generate(user: str, prompt: str) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="default",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=4,
        user=user,
    )


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_router_erases_a_users_cached_answers_only(
    stack: ServiceStack, tmp_path: Path, store: str
) -> None:
    redis = RedisProcess() if store == "redis" else None
    if redis is not None:
        redis.start()
    try:
        cache = {"redis_url": redis.url} if redis is not None else {}
        audit = tmp_path / "audit"
        suite = await start_suite(
            stack,
            router={
                "resilience": {"cache": cache},
                "audit": {"enabled": True, "directory": str(audit)},
            },
        )
        for user, prompt in (("x", "one"), ("x", "two"), ("y", "three"), ("y", "two")):
            await collect(suite.router_stub.Generate(generate(user, prompt), metadata=AUTH))
        admin = admin_pb2_grpc.RouterAdminServiceStub(stack.channel(suite.router))

        erased = await admin.EraseUser(admin_pb2.EraseUserRequest(user_id="x"))

        # "two" was asked by both: its answer goes with either user's erasure.
        assert erased.cache_entries_deleted == 2
        assert (
            await admin.EraseUser(admin_pb2.EraseUserRequest(user_id="x"))
        ).cache_entries_deleted == 0
        assert (
            await admin.EraseUser(admin_pb2.EraseUserRequest(user_id="y"))
        ).cache_entries_deleted == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.EraseUser(admin_pb2.EraseUserRequest(user_id="u" * 257))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await stack.stop(suite.router)
        details = [
            r["detail"]
            for r in read_records(audit / "router.jsonl")
            if r.get("action") == "privacy.erased"
        ]
        assert details == [
            "cache_entries_deleted=2",
            "cache_entries_deleted=0",
            "cache_entries_deleted=1",
        ]
    finally:
        if redis is not None:
            redis.stop()


async def test_router_spans_are_redacted_before_export(stack: ServiceStack) -> None:
    telemetry = await start(stack)  # telemetry itself does not redact here
    suite = await start_suite(
        stack,
        tracing=tracing_to(telemetry.port),
        router={"privacy": {"redact_pii": True}},
    )
    _, queries = stubs(stack, telemetry)
    await collect(suite.router_stub.Generate(generate("erin@example.com", "hello"), metadata=AUTH))
    found = await eventually(
        lambda: queries.SearchTraces(
            telemetry_pb2.SearchTracesRequest(attributes={"user_id": EMAIL})
        ),
        lambda got: len(got.traces) == 1,
    )
    assert "sluice-router" in found.traces[0].service_names
    leaked = await queries.SearchTraces(
        telemetry_pb2.SearchTracesRequest(attributes={"user_id": "erin@example.com"})
    )
    assert list(leaked.traces) == []


@pytest.mark.parametrize("redact_pii", [True, False])
def test_error_reports_are_redacted_when_the_option_is_on(
    sentry: tuple[str, Capture],  # noqa: F811 (the fixture imported above)
    redact_pii: bool,
) -> None:
    dsn, capture = sentry
    reporter = ErrorReporter(
        ErrorReportingSettings(sentry_dsn=dsn), "router", redact_pii=redact_pii
    )
    failure = ValueError("upstream refused card 4111 1111 1111 1111 of fay@example.com")
    reporter.report(
        failure, InternalError("internal error"), method="/m", request_id="r", trace_id=""
    )
    reporter.close()
    (event,) = capture.wait(1)
    message = event["exception"]["values"][0]["value"]
    if redact_pii:
        assert message == f"upstream refused card {CARD} of {EMAIL}"
        assert b"4111 1111" not in b"".join(capture.raw)
    else:
        assert message == str(failure)
