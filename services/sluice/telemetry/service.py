"""The telemetry service: OTLP TraceService receiver plus trace queries."""

from __future__ import annotations

import re

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client import Counter, Gauge

from sluice.core.errors import FieldViolation, SluiceError, ValidationError
from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.types import ServicerContext
from sluice.core.telemetry.tracing import build_tracer_provider
from sluice.telemetry.settings import TelemetrySettings
from sluice.telemetry.store import SpanStore
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


class TraceNotFoundError(SluiceError):
    """No span of the trace is stored."""

    reason = "VALIDATION_ERROR"
    code = grpc.StatusCode.NOT_FOUND


class OtlpTraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Accepts OTLP/gRPC span exports and stores them."""

    def __init__(self, store: SpanStore, host: ServiceHost) -> None:
        self._store = store
        spans = Counter(
            "sluice_telemetry_spans",
            "Spans received, by result (stored, dropped).",
            ["result"],
            registry=host.registry,
        )
        self._stored = spans.labels("stored")
        self._dropped = spans.labels("dropped")
        self._traces = Gauge(
            "sluice_telemetry_traces_stored", "Traces held in memory.", registry=host.registry
        )

    async def Export(  # noqa: N802 - gRPC method name
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        total = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        rejected = self._store.add(list(request.resource_spans))
        self._stored.inc(total - rejected)
        self._traces.set(len(self._store))
        response = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            self._dropped.inc(rejected)
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = "per-trace span limit reached"
        return response


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Serves stored traces."""

    def __init__(self, store: SpanStore) -> None:
        self._store = store

    async def GetTrace(  # noqa: N802 - gRPC method name
        self, request: telemetry_pb2.GetTraceRequest, context: ServicerContext
    ) -> telemetry_pb2.GetTraceResponse:
        trace_id = request.trace_id.lower()
        if not _TRACE_ID.match(trace_id):
            raise ValidationError(
                "trace_id must be 32 hex digits",
                field_violations=[FieldViolation("trace_id", "must be 32 hex digits")],
            )
        spans = self._store.trace(bytes.fromhex(trace_id))
        if not spans:
            raise TraceNotFoundError(f"no spans stored for trace {trace_id}")
        return telemetry_pb2.GetTraceResponse(trace_id=trace_id, spans=spans)


def build_server(settings: TelemetrySettings) -> ServiceHost:
    """Wire the telemetry service. Call ``await host.start()`` to bind and serve."""
    # Its own RPCs are not traced and nothing is exported: tracing itself would loop.
    quiet = build_tracer_provider(
        "sluice-telemetry", settings.tracing.model_copy(update={"enabled": False})
    )
    host = ServiceHost("telemetry", settings, tracer_provider=quiet, trace_rpcs=False)
    store = SpanStore(settings.max_traces, settings.max_spans_per_trace)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
        OtlpTraceReceiver(store, host), host.server
    )
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(TelemetryServicer(store), host.server)
    host.add_service(trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name)
    host.add_service(telemetry_pb2.DESCRIPTOR.services_by_name["TelemetryService"].full_name)
    return host
