"""Telemetry pipeline: bounded ingest, tail sampling, search, stats, forwarding."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace

from sluice.core.grpcx.server import ServiceHost
from sluice.telemetry.service import build_server
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.integration.test_telemetry import export_request
from tests.support import ServiceStack, error_info, eventually, metric, telemetry_settings

MS = 1_000_000
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def span(
    trace_id: bytes,
    *,
    name: str = "op",
    parent: bytes = b"",
    span_id: bytes | None = None,
    duration_ms: int = 5,
    error: bool = False,
    attributes: dict[str, str] | None = None,
) -> otlp_trace.Span:
    end = time.time_ns()
    result = otlp_trace.Span(
        trace_id=trace_id,
        span_id=span_id or os.urandom(8),
        parent_span_id=parent,
        name=name,
        kind=otlp_trace.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=end - duration_ms * MS,
        end_time_unix_nano=end,
        attributes=[
            otlp_common.KeyValue(key=k, value=otlp_common.AnyValue(string_value=v))
            for k, v in (attributes or {}).items()
        ],
    )
    if error:
        result.status.code = otlp_trace.Status.STATUS_CODE_ERROR
    return result


async def start(stack: ServiceStack, **fields: Any) -> ServiceHost:
    return await stack.start(build_server(telemetry_settings(**fields)))


def stubs(
    stack: ServiceStack, host: ServiceHost | int
) -> tuple[trace_service_pb2_grpc.TraceServiceStub, telemetry_pb2_grpc.TelemetryServiceStub]:
    channel = stack.channel(host)
    return (
        trace_service_pb2_grpc.TraceServiceStub(channel),
        telemetry_pb2_grpc.TelemetryServiceStub(channel),
    )


async def decided(host: ServiceHost, decision: str, count: int) -> float:
    return await eventually(
        lambda: metric(host.metrics_port, "sluice_telemetry_traces_total", decision=decision),
        lambda value: value >= count,
        within_s=5,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_full_ingest_queue_rejects_at_once_and_counts(stack: ServiceStack) -> None:
    host = await start(stack, ingest_queue_spans=2)
    receiver, _ = stubs(stack, host)
    trace_id = os.urandom(16)

    too_big = await receiver.Export(
        export_request("svc", *(span(trace_id) for _ in range(3))), timeout=2
    )
    fits = await receiver.Export(export_request("svc", span(trace_id), span(trace_id)), timeout=2)

    assert too_big.partial_success.rejected_spans == 3
    assert "queue full" in too_big.partial_success.error_message
    assert not fits.HasField("partial_success")
    port = host.metrics_port
    assert await metric(port, "sluice_telemetry_spans_total", result="dropped_queue_full") == 3
    assert await metric(port, "sluice_telemetry_spans_total", result="accepted") == 2


async def test_tail_sampling_keeps_errors_and_slow_traces_at_ratio_zero(
    stack: ServiceStack,
) -> None:
    host = await start(stack, sampling={"keep_ratio": 0.0, "slow_threshold_ms": 100})
    receiver, queries = stubs(stack, host)
    ok_id, error_id, slow_id = (os.urandom(16) for _ in range(3))
    root = os.urandom(8)
    await receiver.Export(export_request("router", span(ok_id)))
    # The error is in a child exported by another service, separately.
    await receiver.Export(export_request("router", span(error_id, span_id=root)))
    await receiver.Export(export_request("provider", span(error_id, parent=root, error=True)))
    await receiver.Export(export_request("router", span(slow_id, duration_ms=150)))

    assert await decided(host, "dropped", 1) == 1
    assert await decided(host, "kept_error", 1) == 1
    assert await decided(host, "kept_slow", 1) == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queries.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=ok_id.hex()))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    got = await queries.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=error_id.hex()))
    assert {s.service_name for s in got.spans} == {"router", "provider"}
    found = await queries.SearchTraces(telemetry_pb2.SearchTracesRequest())
    assert {t.trace_id for t in found.traces} == {error_id.hex(), slow_id.hex()}
    # Statistics count every trace, sampled out or not.
    stats = await queries.GetStats(telemetry_pb2.GetStatsRequest(service_name="router"))
    assert [o.count for o in stats.operations] == [3]


async def test_search_filters_combine(stack: ServiceStack) -> None:
    host = await start(stack)
    receiver, queries = stubs(stack, host)
    a, b, c = (os.urandom(16) for _ in range(3))
    await receiver.Export(
        export_request(
            "router",
            span(a, duration_ms=50, attributes={"user_id": "u1", "gen_ai.request.model": "m1"}),
            span(b, error=True, attributes={"user_id": "u2", "gen_ai.request.model": "m1"}),
        )
    )
    await receiver.Export(export_request("limiter", span(c, duration_ms=1)))
    await eventually(
        lambda: metric(host.metrics_port, "sluice_telemetry_traces_stored"),
        lambda value: value == 3,
    )

    async def search(**fields: Any) -> set[str]:
        response = await queries.SearchTraces(telemetry_pb2.SearchTracesRequest(**fields))
        return {t.trace_id for t in response.traces}

    assert await search() == {a.hex(), b.hex(), c.hex()}
    assert await search(service_name="router") == {a.hex(), b.hex()}
    assert await search(service_name="nobody") == set()
    assert await search(status=telemetry_pb2.TRACE_STATUS_ERROR) == {b.hex()}
    assert await search(status=telemetry_pb2.TRACE_STATUS_OK) == {a.hex(), c.hex()}
    assert await search(min_duration_ms=40) == {a.hex()}
    assert await search(attributes={"user_id": "u1"}) == {a.hex()}
    assert await search(attributes={"gen_ai.request.model": "m1"}) == {a.hex(), b.hex()}
    assert await search(attributes={"gen_ai.request.model": "m1", "user_id": "u2"}) == {b.hex()}
    assert await search(attributes={"user_id": "u3"}) == set()
    assert len(await search(limit=1)) == 1
    [summary] = (
        await queries.SearchTraces(telemetry_pb2.SearchTracesRequest(attributes={"user_id": "u1"}))
    ).traces
    assert (summary.root_service_name, summary.span_count, summary.error) == ("router", 1, False)
    assert summary.duration_ms == pytest.approx(50)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queries.SearchTraces(telemetry_pb2.SearchTracesRequest(limit=1001))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "VALIDATION_ERROR"


async def test_service_graph_stats_and_breakdown_are_served(stack: ServiceStack) -> None:
    host = await start(stack)
    receiver, queries = stubs(stack, host)
    for error in (False, True):
        trace_id, root = os.urandom(16), os.urandom(8)
        await receiver.Export(export_request("router", span(trace_id, span_id=root, name="Gen")))
        await receiver.Export(
            export_request("provider", span(trace_id, parent=root, name="Stream", error=error))
        )
    await decided(host, "kept_sampled", 1)
    await decided(host, "kept_error", 1)

    graph = await queries.GetServiceGraph(telemetry_pb2.GetServiceGraphRequest())
    assert [(e.client, e.server, e.calls, e.errors, e.error_rate) for e in graph.edges] == [
        ("router", "provider", 2, 1, 0.5)
    ]
    stats = await queries.GetStats(telemetry_pb2.GetStatsRequest(window_s=30))
    assert stats.window_s == 30
    assert [(o.service_name, o.operation, o.count) for o in stats.operations] == [
        ("provider", "Stream", 2),
        ("router", "Gen", 2),
    ]
    breakdown = await queries.GetBreakdown(telemetry_pb2.GetBreakdownRequest(limit=1))
    assert len(breakdown.slowest) == 1
    assert [k.kind for k in breakdown.kinds] == ["SPAN_KIND_SERVER"]
    text_port = host.metrics_port
    assert (
        await metric(text_port, "sluice_service_graph_errors", client="router", server="provider")
        == 1
    )


async def raw_receiver(stack: ServiceStack) -> tuple[grpc.aio.Server, int, list[bytes]]:
    """An OTLP endpoint that records the exact request bytes it receives."""
    received: list[bytes] = []

    async def export(raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        received.append(raw)
        return trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                TRACE_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, received


async def test_forwarding_reaches_every_live_endpoint_while_one_is_dead(
    stack: ServiceStack,
) -> None:
    downstream = await start(stack)
    raw_server, raw_port, received = await raw_receiver(stack)
    dead = f"127.0.0.1:{free_port()}"
    try:
        upstream = await start(
            stack,
            forward=[
                {
                    "endpoint": dead,
                    "max_buffer_spans": 2,
                    "max_batch_spans": 1,
                    "backoff_initial_s": 0.05,
                    "max_attempts": 100,
                },
                {"endpoint": f"127.0.0.1:{raw_port}"},
                {"endpoint": f"127.0.0.1:{downstream.port}"},
            ],
        )
        receiver, _ = stubs(stack, upstream)
        trace_ids = [os.urandom(16) for _ in range(4)]
        sent = [span(t, name=f"s{i}", attributes={"user_id": "u"}) for i, t in enumerate(trace_ids)]
        for item in sent:
            await receiver.Export(export_request("router", item))

        _, down_queries = stubs(stack, downstream)

        async def downstream_ids() -> set[str]:
            response = await down_queries.SearchTraces(telemetry_pb2.SearchTracesRequest())
            return {t.trace_id for t in response.traces}

        assert await eventually(downstream_ids, lambda ids: len(ids) == 4, within_s=5) == {
            t.hex() for t in trace_ids
        }
        got = await down_queries.GetTrace(
            telemetry_pb2.GetTraceRequest(trace_id=trace_ids[0].hex())
        )
        assert [(s.name, s.service_name, dict(s.attributes)) for s in got.spans] == [
            ("s0", "router", {"user_id": "u"})
        ]

        # The same export, byte for byte, is valid OTLP for opentelemetry-proto.
        await eventually(lambda: _count(received), lambda n: n >= 1)
        forwarded: list[otlp_trace.Span] = []
        for raw in received:
            parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(raw)
            assert parsed.SerializeToString() == raw
            for resource_spans in parsed.resource_spans:
                assert resource_spans.resource.attributes[0].key == "service.name"
                for scope_spans in resource_spans.scope_spans:
                    forwarded.extend(scope_spans.spans)
        assert sorted(s.SerializeToString() for s in forwarded) == sorted(
            s.SerializeToString() for s in sent
        )

        port = upstream.metrics_port
        assert (
            await eventually(
                lambda: metric(
                    port, "sluice_telemetry_forwarded_spans_total", endpoint=dead, result="dropped"
                ),
                lambda value: value >= 1,
            )
            >= 1
        )
        assert await metric(port, "sluice_telemetry_forward_buffer_spans", endpoint=dead) <= 2
        # Three buffers of 16 MiB each (the default), reported as one store.
        store = {"store": "forward_buffers"}
        assert await metric(port, "sluice_telemetry_memory_bound_bytes", **store) == 48 * 2**20
        assert 0 <= await metric(port, "sluice_telemetry_memory_used_bytes", **store) <= 48 * 2**20
        assert await metric(port, "sluice_telemetry_forward_retries_total", endpoint=dead) >= 1
        assert (
            await metric(
                port,
                "sluice_telemetry_forwarded_spans_total",
                endpoint=f"127.0.0.1:{downstream.port}",
                result="sent",
            )
            == 4
        )
    finally:
        await raw_server.stop(0)


async def _count(items: list[bytes]) -> int:
    return len(items)


async def test_an_endpoint_that_comes_up_late_gets_the_spans_by_retrying(
    stack: ServiceStack,
) -> None:
    port = free_port()
    upstream = await start(
        stack,
        forward=[{"endpoint": f"127.0.0.1:{port}", "backoff_initial_s": 0.05, "max_attempts": 100}],
    )
    receiver, _ = stubs(stack, upstream)
    trace_id = os.urandom(16)
    await receiver.Export(export_request("router", span(trace_id, error=True)))
    retries = await eventually(
        lambda: metric(
            upstream.metrics_port,
            "sluice_telemetry_forward_retries_total",
            endpoint=f"127.0.0.1:{port}",
        ),
        lambda value: value >= 1,
        within_s=5,
    )
    assert retries >= 1

    downstream = await start(stack, server={"port": port})
    _, down_queries = stubs(stack, downstream)

    async def read() -> int:
        response = await down_queries.SearchTraces(telemetry_pb2.SearchTracesRequest())
        return len(response.traces)

    assert await eventually(read, lambda n: n == 1, within_s=10) == 1


async def test_metrics_report_every_memory_bound_and_its_use(stack: ServiceStack) -> None:
    host = await start(stack, max_store_bytes=2 * 1024 * 1024)
    receiver, _ = stubs(stack, host)
    bound = await metric(host.metrics_port, "sluice_telemetry_memory_bound_bytes", store="traces")
    assert bound == 2 * 1024 * 1024
    for store in ("pending_traces", "stats_samples", "decisions"):
        assert await metric(host.metrics_port, "sluice_telemetry_memory_bound_bytes", store=store)
    trace_id = os.urandom(16)
    await receiver.Export(export_request("router", span(trace_id, error=True)))
    used = await eventually(
        lambda: metric(host.metrics_port, "sluice_telemetry_memory_used_bytes", store="traces"),
        lambda value: value > 0,
        within_s=5,
    )
    assert 0 < used <= bound
    decisions = await metric(
        host.metrics_port, "sluice_telemetry_memory_used_bytes", store="decisions"
    )
    assert (
        0
        < decisions
        <= await metric(host.metrics_port, "sluice_telemetry_memory_bound_bytes", store="decisions")
    )
