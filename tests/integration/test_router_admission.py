"""The router's admission gate on the request path: queueing by class, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.core.grpcx.server import ServiceHost
from sluice.router.v1 import router_pb2
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.support import (
    API_KEY,
    SLOW_BACKEND,
    ServiceStack,
    error_info,
    eventually,
    metric,
    sha256_hex,
    start_suite,
    tracing_to,
)

BG_KEY = "sk-background-key"
# A premium key and a background key of another tenant, one slot per back end.
ONE_SLOT_TWO_TIERS: dict[str, object] = {
    "api_keys": [
        {"id": "k1", "sha256": sha256_hex(API_KEY), "tier": "premium"},
        {"id": "bg", "sha256": sha256_hex(BG_KEY), "tenant": "t2", "tier": "background"},
    ],
    "admission": {"adaptive": {"initial_limit": 1, "min_limit": 1, "max_limit": 1}},
}


def request() -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content="queue me")],
        max_tokens=2000,
    )


async def test_a_second_stream_queues_for_the_only_slot_then_runs(
    stack: ServiceStack,
) -> None:
    suite = await start_suite(
        stack,
        backend=SLOW_BACKEND,
        router=ONE_SLOT_TWO_TIERS,
    )
    port = suite.router.metrics_port
    first = suite.router_stub.Generate(request(), metadata=[("x-api-key", API_KEY)])
    # The first stream holds the only slot once it has produced its first event.
    await first.read()
    assert await metric(port, "sluice_router_admitted_in_flight", backend="simulated") == 1

    second = suite.router_stub.Generate(request(), metadata=[("x-api-key", BG_KEY)], timeout=30)
    second_started = asyncio.ensure_future(second.read())
    for _ in range(200):
        depth = await metric(
            port, "sluice_router_queue_depth", backend="simulated", priority="background"
        )
        if depth == 1:
            break
        await asyncio.sleep(0.01)
    assert depth == 1
    assert not second_started.done()

    first.cancel()  # frees the slot: the queued stream starts
    event = await asyncio.wait_for(second_started, timeout=10)
    assert event.WhichOneof("event") == "metadata"
    assert await metric(port, "sluice_router_queue_wait_seconds_count", priority="background") == 1
    assert await metric(port, "sluice_router_concurrency_limit", backend="simulated") == 1

    second.cancel()


async def test_a_queued_request_has_a_queue_wait_span_under_its_request_span(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(
        stack,
        backend=SLOW_BACKEND,
        router=ONE_SLOT_TWO_TIERS,
        tracing=tracing_to(telemetry_host.port),
    )
    port = suite.router.metrics_port
    holder = suite.router_stub.Generate(request(), metadata=[("x-api-key", API_KEY)])
    first = await holder.read()  # holds the only slot now
    waiter = suite.router_stub.Generate(request(), metadata=[("x-api-key", BG_KEY)], timeout=30)
    waiter_started = asyncio.ensure_future(waiter.read())
    await eventually(
        lambda: metric(
            port, "sluice_router_queue_depth", backend="simulated", priority="background"
        ),
        lambda depth: depth == 1,
        within_s=5,
    )
    assert not waiter_started.done()
    holder.cancel()
    event = await asyncio.wait_for(waiter_started, timeout=10)
    trace_id = event.metadata.trace_id
    waiter.cancel()

    def spans_of(trace: str) -> Callable[[], Awaitable[list[telemetry_pb2.Span]]]:
        async def read() -> list[telemetry_pb2.Span]:
            try:
                found = await telemetry_stub.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=trace))
            except grpc.aio.AioRpcError:
                return []
            return list(found.spans)

        return read

    # The wait span ends first; the request's own span only once its stream has ended.
    found = await eventually(
        spans_of(trace_id),
        lambda got: (
            {"queue_wait admission", "/sluice.router.v1.RouterService/Generate"}
            <= {s.name for s in got}
        ),
        within_s=5,
    )
    wait = next(s for s in found if s.name == "queue_wait admission")
    parent = next(s for s in found if s.span_id == wait.parent_span_id)
    assert (parent.service_name, parent.kind, parent.name) == (
        "sluice-router",
        "SPAN_KIND_SERVER",
        "/sluice.router.v1.RouterService/Generate",
    )
    attributes = dict(wait.attributes)
    assert attributes["sluice.priority"] == "background"
    assert attributes["sluice.tenant"] == "t2"
    assert attributes["sluice.queue.depth"] == "0"  # nobody else waited when it arrived
    assert float(attributes["sluice.queue.wait_ms"]) > 0
    assert wait.end_time_unix_nano - wait.start_time_unix_nano > 0
    # The request the first one made did not wait, and so has no such span.
    first_spans = await eventually(
        spans_of(first.metadata.trace_id),
        lambda got: any(s.name == "/sluice.router.v1.RouterService/Generate" for s in got),
        within_s=5,
    )
    assert first_spans
    assert all(s.name != "queue_wait admission" for s in first_spans)


async def test_a_request_whose_deadline_passes_in_the_queue_is_deadline_exceeded(
    stack: ServiceStack,
) -> None:
    suite = await start_suite(
        stack,
        backend=SLOW_BACKEND,
        router={
            "admission": {"adaptive": {"initial_limit": 1, "min_limit": 1, "max_limit": 1}},
            "resilience": {"min_deadline_ms": 1},
        },
    )
    port = suite.router.metrics_port
    holder = suite.router_stub.Generate(request(), metadata=[("x-api-key", API_KEY)])
    await holder.read()

    waiter = suite.router_stub.Generate(request(), metadata=[("x-api-key", API_KEY)], timeout=0.3)
    try:
        async for _ in waiter:
            pass
        raise AssertionError("the queued stream must not run")
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        info = error_info(err) if err.trailing_metadata() else None
        assert info is None or info.reason == "DEADLINE_EXCEEDED"
    holder.cancel()
    # The client's own timer may fire a moment before the server refuses.
    refused = await eventually(
        lambda: metric(
            port, "sluice_router_admission_refused_total", priority="normal", reason="deadline"
        ),
        lambda value: value == 1,
    )
    assert refused == 1
    assert (
        await metric(port, "sluice_router_queue_depth", backend="simulated", priority="normal") == 0
    )


async def test_a_spent_budget_refuses_with_failed_precondition(stack: ServiceStack) -> None:
    suite = await start_suite(
        stack,
        router={
            "budgets": {
                "prices": {"default": {"output_per_million": 1_000_000}},
                "default": 0.5,
            }
        },
    )
    small = router_pb2.GenerateRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content="spend")],
        max_tokens=2,
    )
    events = [e async for e in suite.router_stub.Generate(small, metadata=[("x-api-key", API_KEY)])]
    assert events[-1].WhichOneof("event") == "complete"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in suite.router_stub.Generate(small, metadata=[("x-api-key", API_KEY)]):
            pass
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info.reason == "BUSINESS_RULE_VIOLATION"
    assert info.metadata["budget"] == "0.5"
    port = suite.router.metrics_port
    assert await metric(port, "sluice_router_budget_refusals_total") == 1


async def test_streams_of_keys_without_a_budget_send_no_spend(stack: ServiceStack) -> None:
    # Prices are configured (spend is counted) but no key has a budget: nothing to share,
    # so the stream's end costs no call to the limiter.
    suite = await start_suite(
        stack, router={"budgets": {"prices": {"default": {"output_per_million": 1_000_000}}}}
    )
    small = router_pb2.GenerateRequest(
        model="default", messages=[common_pb2.Message(role="user", content="free")], max_tokens=2
    )
    for _ in range(3):
        stream = suite.router_stub.Generate(small, metadata=[("x-api-key", API_KEY)])
        events = [e async for e in stream]
        assert events[-1].WhichOneof("event") == "complete"

    router_port, limiter_port = suite.router.metrics_port, suite.limiter.metrics_port
    assert await metric(router_port, "sluice_router_spend_total", model="default") > 0
    acquired = await metric(
        limiter_port,
        "sluice_rpc_requests_total",
        method="/sluice.limiter.v1.LimiterService/Acquire",
    )
    leased = await metric(router_port, "sluice_router_leased_admissions_total")
    assert acquired + leased == 3  # each request admitted once (a lease admits without a call)
    spends = await metric(
        limiter_port, "sluice_rpc_requests_total", method="/sluice.limiter.v1.LimiterService/Spend"
    )
    assert spends == 0
