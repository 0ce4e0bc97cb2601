"""OTLP log export: a log line and its span share the trace id at the destination.

One local OTLP/gRPC destination implements both TraceService and LogsService (as a
collector does) and records what arrives; a service's tracer provider and its OTLP log
handler (core/telemetry/logging.py) export to it. The record logged inside a span must
arrive with that span's trace and span ids, beside the span itself, and the JSON line on
stderr names the same trace id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from sluice.core.config import LogExportSettings, TracingSettings
from sluice.core.telemetry.logging import JsonFormatter, configure_logging, otlp_log_handler
from sluice.core.telemetry.tracing import build_tracer_provider


@dataclass
class Destination:
    logs: list[logs_service_pb2.ExportLogsServiceRequest] = field(default_factory=list)
    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, destination: Destination) -> None:
        self._destination = destination

    async def Export(  # noqa: N802 - gRPC method name
        self, request: logs_service_pb2.ExportLogsServiceRequest, context: object
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        self._destination.logs.append(request)
        return logs_service_pb2.ExportLogsServiceResponse()


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, destination: Destination) -> None:
        self._destination = destination

    async def Export(  # noqa: N802 - gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._destination.traces.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Destination, str]]:
    destination = Destination()
    server = grpc.aio.server()
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(destination), server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(destination), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield destination, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_a_log_line_and_its_span_share_the_trace_id_at_the_destination(
    collector: tuple[Destination, str],
) -> None:
    destination, endpoint = collector
    tracing = TracingSettings(endpoint=endpoint, sample_ratio=1.0, export_delay_ms=10)
    tracer_provider = build_tracer_provider("sluice-logtest", tracing)
    handler, log_provider = otlp_log_handler(
        "sluice-logtest", LogExportSettings(endpoint=endpoint, export_delay_ms=10)
    )
    logger = logging.getLogger("sluice.logtest")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    lines: list[str] = []
    json_handler = logging.Handler()
    json_handler.setFormatter(JsonFormatter("sluice-logtest"))
    json_handler.emit = lambda record: lines.append(json_handler.format(record))  # type: ignore[method-assign]
    logger.addHandler(json_handler)
    try:
        with tracer_provider.get_tracer("test").start_as_current_span("Complete") as span:
            logger.warning("upstream slow: %d ms", 1234)
            context = span.get_span_context()
        logger.info("outside any span")
        logger.debug("below the level")
        # The exporters run in their own threads: flush them off the event loop.
        await asyncio.to_thread(tracer_provider.force_flush)
        await asyncio.to_thread(log_provider.force_flush)
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(json_handler)
        await asyncio.to_thread(log_provider.shutdown)
        await asyncio.to_thread(tracer_provider.shutdown)

    records = [
        (resource_logs.resource, record)
        for request in destination.logs
        for resource_logs in request.resource_logs
        for scope_logs in resource_logs.scope_logs
        for record in scope_logs.log_records
    ]
    bodies = {record.body.string_value: record for _, record in records}
    assert set(bodies) == {"upstream slow: 1234 ms", "outside any span"}
    inside = bodies["upstream slow: 1234 ms"]
    assert inside.severity_text == "WARN" or inside.severity_text == "WARNING"
    assert inside.trace_id == context.trace_id.to_bytes(16, "big")
    assert inside.span_id == context.span_id.to_bytes(8, "big")
    assert bodies["outside any span"].trace_id == b""
    resource = {kv.key: kv.value.string_value for kv in records[0][0].attributes}
    assert resource["service.name"] == "sluice-logtest"

    spans = [
        span
        for request in destination.traces
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert [(s.name, s.trace_id, s.span_id) for s in spans] == [
        ("Complete", inside.trace_id, inside.span_id)
    ]
    assert json.loads(lines[0])["trace_id"] == inside.trace_id.hex()


async def test_a_dead_log_destination_never_blocks_logging() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    handler, provider = otlp_log_handler(
        "sluice-logtest", LogExportSettings(endpoint=dead, max_queue_size=64, timeout_s=0.3)
    )
    logger = logging.getLogger("sluice.logtest.dead")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        began = time.perf_counter()
        for i in range(1000):
            logger.info("line %d", i)
        assert time.perf_counter() - began < 1.0
    finally:
        logger.removeHandler(handler)
        began = time.perf_counter()
        await asyncio.to_thread(provider.shutdown)
        assert time.perf_counter() - began < 3.0  # the flush at exit is bounded too


def test_configure_logging_exports_only_when_an_endpoint_is_set() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        assert configure_logging("sluice-x", "INFO", LogExportSettings()) is None
        assert len(root.handlers) == 1
        provider = configure_logging("sluice-x", "INFO", LogExportSettings(endpoint="127.0.0.1:9"))
        assert provider is not None
        assert len(root.handlers) == 2
        provider.shutdown()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
