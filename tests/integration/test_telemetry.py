"""Telemetry: OTLP span export in, GetTrace out."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from google.rpc import error_details_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sluice.core.grpcx.server import ServiceHost
from sluice.telemetry.service import build_server
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.support import (
    ServiceStack,
    details_of,
    error_info,
    eventually,
    metric,
    rich_status,
    telemetry_settings,
)


def otlp_span(
    trace_id: bytes, span_id: bytes, parent: bytes = b"", *, name: str, start: int, end: int
) -> otlp_trace.Span:
    return otlp_trace.Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=otlp_trace.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        status=otlp_trace.Status(code=otlp_trace.Status.STATUS_CODE_ERROR, message="boom"),
        attributes=[
            otlp_common.KeyValue(key="rpc.method", value=otlp_common.AnyValue(string_value="Go")),
            otlp_common.KeyValue(key="retries", value=otlp_common.AnyValue(int_value=2)),
        ],
        events=[otlp_trace.Span.Event(name="cancelled", time_unix_nano=start + 1)],
    )


def export_request(
    service: str, *spans: otlp_trace.Span
) -> trace_service_pb2.ExportTraceServiceRequest:
    resource = resource_pb2.Resource(
        attributes=[
            otlp_common.KeyValue(
                key="service.name", value=otlp_common.AnyValue(string_value=service)
            )
        ]
    )
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            otlp_trace.ResourceSpans(
                resource=resource, scope_spans=[otlp_trace.ScopeSpans(spans=list(spans))]
            )
        ]
    )


async def test_raw_export_then_get_trace(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    trace_id, root_id, child_id = os.urandom(16), os.urandom(8), os.urandom(8)
    receiver = trace_service_pb2_grpc.TraceServiceStub(stack.channel(telemetry_host))
    # Exported child first, by another service, in a separate request.
    await receiver.Export(
        export_request(
            "svc-b", otlp_span(trace_id, child_id, root_id, name="child", start=2_000, end=3_000)
        )
    )
    response = await receiver.Export(
        export_request("svc-a", otlp_span(trace_id, root_id, name="root", start=1_000, end=4_000))
    )
    assert not response.HasField("partial_success")

    async def read() -> telemetry_pb2.GetTraceResponse:
        request = telemetry_pb2.GetTraceRequest(trace_id=trace_id.hex())
        response: telemetry_pb2.GetTraceResponse = await telemetry_stub.GetTrace(request)
        return response

    got = await eventually(read, lambda r: len(r.spans) == 2)  # ingest is asynchronous

    assert got.trace_id == trace_id.hex()
    assert [s.name for s in got.spans] == ["root", "child"]  # start order
    root, child = got.spans
    assert (root.span_id, root.parent_span_id, root.service_name) == (root_id.hex(), "", "svc-a")
    assert (child.parent_span_id, child.service_name) == (root_id.hex(), "svc-b")
    assert (child.start_time_unix_nano, child.end_time_unix_nano) == (2_000, 3_000)
    assert child.kind == "SPAN_KIND_SERVER"
    assert child.status_code == "STATUS_CODE_ERROR"
    assert child.status_message == "boom"
    assert dict(child.attributes) == {"rpc.method": "Go", "retries": "2"}
    assert list(child.event_names) == ["cancelled"]
    assert (
        await metric(telemetry_host.metrics_port, "sluice_telemetry_spans_total", result="accepted")
        == 2
    )
    stored = await eventually(
        lambda: metric(telemetry_host.metrics_port, "sluice_telemetry_traces_stored"),
        lambda value: value == 1,
    )
    assert stored == 1


async def test_sdk_otlp_exporter_spans_are_stored(
    telemetry_host: ServiceHost, telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("outer", kind=SpanKind.SERVER) as outer,
        tracer.start_as_current_span("inner", kind=SpanKind.CLIENT),
    ):
        pass
    trace_hex = format(outer.get_span_context().trace_id, "032x")
    exporter = OTLPSpanExporter(
        endpoint=f"127.0.0.1:{telemetry_host.port}", insecure=True, timeout=5
    )
    try:
        # The exporter blocks on network I/O; the server runs on this event loop.
        result = await asyncio.to_thread(exporter.export, memory.get_finished_spans())
    finally:
        await asyncio.to_thread(exporter.shutdown)
        provider.shutdown()
    assert result == SpanExportResult.SUCCESS

    async def read() -> telemetry_pb2.GetTraceResponse:
        request = telemetry_pb2.GetTraceRequest(trace_id=trace_hex.upper())
        response: telemetry_pb2.GetTraceResponse = await telemetry_stub.GetTrace(request)
        return response

    got = await eventually(read, lambda r: len(r.spans) == 2)

    by_name = {s.name: s for s in got.spans}
    assert set(by_name) == {"outer", "inner"}
    assert by_name["inner"].parent_span_id == by_name["outer"].span_id
    assert by_name["outer"].parent_span_id == ""
    assert by_name["inner"].kind == "SPAN_KIND_CLIENT"
    assert {s.service_name for s in got.spans} == {"sdk-test"}
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano > 0 for s in got.spans)


async def test_malformed_trace_id_is_invalid_argument(
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    # One service for all the bad ids: each start/stop costs half a second.
    for bad in ("", "xyz", "0" * 31, "0" * 33, "g" * 32, "0" * 30 + "-1", " " + "a" * 31):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await telemetry_stub.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=bad))

        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert error_info(caught.value).reason == "VALIDATION_ERROR"
        [bad_request] = details_of(rich_status(caught.value), error_details_pb2.BadRequest)
        assert [v.field for v in bad_request.field_violations] == ["trace_id"]


async def test_unknown_trace_is_not_found(
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await telemetry_stub.GetTrace(telemetry_pb2.GetTraceRequest(trace_id="ab" * 16))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ab" * 16 in (caught.value.details() or "")


async def test_spans_beyond_the_per_trace_limit_are_rejected(stack: ServiceStack) -> None:
    host = await stack.start(build_server(telemetry_settings(max_spans_per_trace=2)))
    receiver = trace_service_pb2_grpc.TraceServiceStub(stack.channel(host))
    trace_id = os.urandom(16)
    spans = [otlp_span(trace_id, os.urandom(8), name=f"s{i}", start=i, end=i + 1) for i in range(3)]

    response = await receiver.Export(export_request("svc", *spans))

    assert not response.HasField("partial_success")  # accepted; the limit applies at ingest
    dropped = await eventually(
        lambda: metric(
            host.metrics_port, "sluice_telemetry_spans_total", result="dropped_trace_limit"
        ),
        lambda value: value == 1,
    )
    assert dropped == 1
    got = await telemetry_pb2_grpc.TelemetryServiceStub(stack.channel(host)).GetTrace(
        telemetry_pb2.GetTraceRequest(trace_id=trace_id.hex())
    )
    assert [s.name for s in got.spans] == ["s0", "s1"]
