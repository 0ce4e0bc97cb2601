"""Distributed tracing: one Generate is one trace across router, limiter and provider."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.core.grpcx.server import ServiceHost
from sluice.router.v1 import router_pb2
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.support import (
    AUTH,
    SLOW_BACKEND,
    ServiceStack,
    collect,
    eventually,
    start_suite,
    tracing_to,
)

SERVICES = {"sluice-router", "sluice-limiter", "sluice-provider"}
PROVIDER_STREAM = "/sluice.provider.v1.ProviderService/Stream"
LIMITER_ACQUIRE = "/sluice.limiter.v1.LimiterService/Acquire"
ROUTER_GENERATE = "/sluice.router.v1.RouterService/Generate"

Spans = list[telemetry_pb2.Span]


def request(prompt: str = "trace me") -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="default", messages=[common_pb2.Message(role="user", content=prompt)]
    )


def trace_reader(
    stub: telemetry_pb2_grpc.TelemetryServiceStub, trace_id: str
) -> Callable[[], Awaitable[Spans]]:
    async def read() -> Spans:
        try:
            response = await stub.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=trace_id))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
        return list(response.spans)

    return read


def signature(spans: Spans) -> set[tuple[str, str, str]]:
    return {(s.service_name, s.kind, s.name) for s in spans}


EXPECTED = {
    ("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE),
    ("sluice-router", "SPAN_KIND_CLIENT", LIMITER_ACQUIRE),
    ("sluice-limiter", "SPAN_KIND_SERVER", LIMITER_ACQUIRE),
    ("sluice-router", "SPAN_KIND_CLIENT", PROVIDER_STREAM),
    ("sluice-provider", "SPAN_KIND_SERVER", PROVIDER_STREAM),
}


async def test_generate_is_one_connected_trace(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, tracing=tracing_to(telemetry_host.port))

    events = await collect(suite.router_stub.Generate(request(), metadata=AUTH))
    trace_id = events[0].metadata.trace_id
    assert len(trace_id) == 32

    spans = await eventually(
        trace_reader(telemetry_stub, trace_id),
        lambda found: signature(found) >= EXPECTED,
        within_s=5,
    )

    assert signature(spans) >= EXPECTED, signature(spans)
    assert {s.service_name for s in spans} == SERVICES
    ids = {s.span_id for s in spans}
    assert len(ids) == len(spans)
    roots = [s for s in spans if not s.parent_span_id]
    assert [(r.service_name, r.kind, r.name) for r in roots] == [
        ("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE)
    ]
    orphans = [s.name for s in spans if s.parent_span_id and s.parent_span_id not in ids]
    assert orphans == []
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano > 0 for s in spans)
    by_id = {s.span_id: s for s in spans}
    # Each server span hangs off the router's client span for the same method.
    for server in (s for s in spans if s.kind == "SPAN_KIND_SERVER" and s.parent_span_id):
        parent = by_id[server.parent_span_id]
        assert (parent.service_name, parent.kind, parent.name) == (
            "sluice-router",
            "SPAN_KIND_CLIENT",
            server.name,
        )
        assert parent.start_time_unix_nano <= server.start_time_unix_nano


async def test_cancelled_stream_still_ends_the_router_client_span(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND, tracing=tracing_to(telemetry_host.port))
    call = suite.router_stub.Generate(request("a long answer, please"), metadata=AUTH)
    trace_id = ""
    async for event in call:
        if event.HasField("metadata"):
            trace_id = event.metadata.trace_id
        if event.HasField("data"):
            break
    call.cancel()
    assert len(trace_id) == 32

    def client_stream_span(found: Spans) -> telemetry_pb2.Span | None:
        for span in found:
            if (span.service_name, span.kind, span.name) == (
                "sluice-router",
                "SPAN_KIND_CLIENT",
                PROVIDER_STREAM,
            ):
                return span
        return None

    spans = await eventually(
        trace_reader(telemetry_stub, trace_id),
        lambda found: client_stream_span(found) is not None,
        within_s=5,
    )

    span = client_stream_span(spans)
    assert span is not None, "the router's client span for the provider stream never ended"
    assert span.end_time_unix_nano >= span.start_time_unix_nano
    assert "cancelled" in span.event_names
    assert span.attributes["rpc.grpc.status_code"] == str(grpc.StatusCode.CANCELLED.value[0])


def by_signature(spans: Spans) -> dict[tuple[str, str, str], telemetry_pb2.Span]:
    return {(s.service_name, s.kind, s.name): s for s in spans}


async def test_every_stream_span_ends_ok_on_completion(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, tracing=tracing_to(telemetry_host.port))
    events = await collect(suite.router_stub.Generate(request(), metadata=AUTH))
    trace_id = events[0].metadata.trace_id

    spans = await eventually(
        trace_reader(telemetry_stub, trace_id), lambda found: signature(found) >= EXPECTED
    )

    assert signature(spans) >= EXPECTED
    for span in spans:
        assert span.attributes["rpc.grpc.status_code"] == "0", span.name
        assert span.status_code == "STATUS_CODE_UNSET", span.name
        assert span.end_time_unix_nano >= span.start_time_unix_nano
    # The stream spans end with the stream, not at the first message.
    generate = by_signature(spans)[("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE)]
    stream = by_signature(spans)[("sluice-provider", "SPAN_KIND_SERVER", PROVIDER_STREAM)]
    assert generate.end_time_unix_nano >= stream.end_time_unix_nano


async def test_stream_spans_end_with_the_error_when_the_provider_is_down(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, tracing=tracing_to(telemetry_host.port))
    await stack.stop(suite.provider)
    call = suite.router_stub.Generate(request(), metadata=AUTH)
    try:
        await collect(call)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    else:
        raise AssertionError("Generate succeeded without a provider")

    async def errors() -> list[telemetry_pb2.TraceSummary]:
        response = await telemetry_stub.SearchTraces(
            telemetry_pb2.SearchTracesRequest(status=telemetry_pb2.TRACE_STATUS_ERROR)
        )
        return list(response.traces)

    [summary] = await eventually(errors, lambda traces: len(traces) == 1, within_s=5)
    # The router's server span ends last (after its retried client calls): wait for it.
    spans = await eventually(
        trace_reader(telemetry_stub, summary.trace_id),
        lambda found: any(
            s.kind == "SPAN_KIND_SERVER" and s.name == ROUTER_GENERATE for s in found
        ),
    )
    spans_by = by_signature(spans)
    server = spans_by[("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE)]
    client = spans_by[("sluice-router", "SPAN_KIND_CLIENT", PROVIDER_STREAM)]
    unavailable = str(grpc.StatusCode.UNAVAILABLE.value[0])
    for span in (server, client):
        assert span.status_code == "STATUS_CODE_ERROR", span.name
        assert span.attributes["rpc.grpc.status_code"] == unavailable, span.name
        assert span.end_time_unix_nano >= span.start_time_unix_nano
    assert client.parent_span_id == server.span_id


async def test_every_stream_span_ends_cancelled_when_the_client_goes(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND, tracing=tracing_to(telemetry_host.port))
    call = suite.router_stub.Generate(request("a long answer, please"), metadata=AUTH)
    trace_id = ""
    async for event in call:
        if event.HasField("metadata"):
            trace_id = event.metadata.trace_id
        if event.HasField("data"):
            break
    call.cancel()
    wanted = {
        ("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE),
        ("sluice-router", "SPAN_KIND_CLIENT", PROVIDER_STREAM),
        ("sluice-provider", "SPAN_KIND_SERVER", PROVIDER_STREAM),
    }

    spans = await eventually(
        trace_reader(telemetry_stub, trace_id),
        lambda found: signature(found) >= wanted,
        within_s=5,
    )

    assert signature(spans) >= wanted, "a stream span never ended after cancellation"
    cancelled = str(grpc.StatusCode.CANCELLED.value[0])
    spans_by = by_signature(spans)
    for key in wanted:
        span = spans_by[key]
        assert span.attributes["rpc.grpc.status_code"] == cancelled, key
        assert "cancelled" in span.event_names, key
        assert span.end_time_unix_nano >= span.start_time_unix_nano
    # Admission finished normally before the stream was cancelled.
    acquire = spans_by[("sluice-limiter", "SPAN_KIND_SERVER", LIMITER_ACQUIRE)]
    assert acquire.attributes["rpc.grpc.status_code"] == "0"


async def test_low_head_sampling_still_delivers_every_error(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    tracing = {**tracing_to(telemetry_host.port), "sample_ratio": 0.0}
    suite = await start_suite(stack, tracing=tracing)
    events = await collect(suite.router_stub.Generate(request(), metadata=AUTH))
    ok_trace = events[0].metadata.trace_id
    await stack.stop(suite.provider)
    # A new prompt: the same one would be served from the response cache (a success).
    with pytest.raises(grpc.aio.AioRpcError):
        await collect(suite.router_stub.Generate(request("not cached"), metadata=AUTH))

    async def errors() -> list[telemetry_pb2.TraceSummary]:
        response = await telemetry_stub.SearchTraces(
            telemetry_pb2.SearchTracesRequest(status=telemetry_pb2.TRACE_STATUS_ERROR)
        )
        return list(response.traces)

    [summary] = await eventually(errors, lambda traces: len(traces) == 1, within_s=5)

    # The router's server span ends last (after its retried client calls), so it may
    # reach the telemetry service in a later batch than the decision.
    spans = await eventually(
        trace_reader(telemetry_stub, summary.trace_id),
        lambda found: any(s.kind == "SPAN_KIND_SERVER" for s in found),
        within_s=5,
    )
    # Only the failed spans of the unsampled trace were exported, still parented.
    assert {(s.kind, s.name, s.status_code) for s in spans} == {
        ("SPAN_KIND_SERVER", ROUTER_GENERATE, "STATUS_CODE_ERROR"),
        ("SPAN_KIND_CLIENT", PROVIDER_STREAM, "STATUS_CODE_ERROR"),
    }
    assert await trace_reader(telemetry_stub, ok_trace)() == []  # sampled out at the head
