"""OpenTelemetry set-up: a tracer provider per service exporting OTLP/gRPC to telemetry."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.instrumentation.grpc.filters import negate, service_prefix
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from sluice.core.config import TracingSettings
from sluice.core.telemetry.grpc_client import TracedUnaryStreamInterceptor
from sluice.core.telemetry.span_export import CountingSpanExporter


def build_tracer_provider(
    service_name: str,
    settings: TracingSettings,
    on_dropped: Callable[[int], None] | None = None,
) -> TracerProvider:
    """A provider that samples new traces at the configured ratio and exports in batches.

    `on_dropped` hears how many spans each failed export lost.
    """
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.namespace": "sluice"}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if settings.enabled:
        exporter: SpanExporter = OTLPSpanExporter(
            endpoint=settings.endpoint, insecure=True, timeout=5
        )
        if on_dropped is not None:
            exporter = CountingSpanExporter(exporter, on_dropped)
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=settings.max_queue_size,
                schedule_delay_millis=settings.export_delay_ms,
                max_export_batch_size=min(512, settings.max_queue_size),
            )
        )
    return provider


def client_tracing_interceptors(provider: TracerProvider) -> Sequence[grpc.aio.ClientInterceptor]:
    """Client interceptors that inject W3C traceparent and record CLIENT spans.

    Unary calls use OpenTelemetry's own interceptor; server-streaming calls use ours,
    which ends the span on cancellation too (see grpc_client).
    """
    library = aio_client_interceptors(
        tracer_provider=provider, filter_=negate(service_prefix("grpc.health.v1"))
    )
    unary_only = [i for i in library if isinstance(i, grpc.aio.UnaryUnaryClientInterceptor)]
    tracer = provider.get_tracer("sluice.core.telemetry.grpc_client")
    return [*unary_only, TracedUnaryStreamInterceptor(tracer)]


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits, or '' when there is none."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
