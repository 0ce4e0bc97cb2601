"""OpenTelemetry set-up: a tracer provider per service exporting OTLP/gRPC to telemetry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanContext, StatusCode, TraceFlags

from sluice.core.config import TracingSettings
from sluice.core.telemetry.grpc_client import (
    TracedUnaryStreamInterceptor,
    TracedUnaryUnaryInterceptor,
)
from sluice.core.telemetry.span_export import CountingSpanExporter


class RecordUnsampled(Sampler):
    """Wraps a sampler: where it drops, record anyway (unsampled) so errors can be exported.

    Sampling design (SPEC §5): head sampling decides which traces are exported whole
    (sampled flag, propagated in traceparent). Spans of the other traces are still
    recorded and ExportSampledOrErrors exports only those that failed, so the telemetry
    service's tail sampler sees, and keeps, every error even at a low head ratio. The
    price is recording (not exporting) every span; `keep_errors: false` avoids it.
    """

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(  # noqa: PLR0917 - the SDK's Sampler signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        """The inner decision, with DROP turned into RECORD_ONLY."""
        result = self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision == Decision.DROP:
            return SamplingResult(Decision.RECORD_ONLY, result.attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        """Shown in debugging output."""
        return f"RecordUnsampled{{{self._inner.get_description()}}}"


class ExportSampledOrErrors(SpanProcessor):
    """Passes sampled spans on, and unsampled ones only when their status is ERROR.

    An unsampled error span is handed on as sampled (a copy with the sampled flag), since
    the SDK's processors ignore unsampled spans.
    """

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do at start."""

    def on_end(self, span: ReadableSpan) -> None:
        """Forward sampled spans, and failed unsampled ones marked sampled."""
        context = span.context
        if context is None:
            return
        if context.trace_flags.sampled:
            self._inner.on_end(span)
        elif span.status.status_code == StatusCode.ERROR:
            sampled = SpanContext(
                context.trace_id,
                context.span_id,
                context.is_remote,
                TraceFlags(TraceFlags.SAMPLED),
                context.trace_state,
            )
            self._inner.on_end(
                ReadableSpan(
                    name=span.name,
                    context=sampled,
                    parent=span.parent,
                    resource=span.resource,
                    attributes=span.attributes,
                    events=span.events,
                    links=span.links,
                    kind=span.kind,
                    status=span.status,
                    start_time=span.start_time,
                    end_time=span.end_time,
                    instrumentation_scope=span.instrumentation_scope,
                )
            )

    def shutdown(self) -> None:
        """Shut the inner processor down."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Flush the inner processor."""
        return self._inner.force_flush(timeout_millis)


def build_sampler(settings: TracingSettings) -> Sampler:
    """Parent-based ratio sampling; with keep_errors, unsampled spans are still recorded."""
    ratio = TraceIdRatioBased(settings.sample_ratio)
    if not settings.keep_errors or settings.sample_ratio >= 1.0:
        return ParentBased(ratio)
    record = RecordUnsampled(ratio)
    return ParentBased(
        record,
        remote_parent_not_sampled=RecordUnsampled(ParentBased(ratio)),
        local_parent_not_sampled=RecordUnsampled(ParentBased(ratio)),
    )


def build_tracer_provider(
    service_name: str,
    settings: TracingSettings,
    on_dropped: Callable[[int], None] | None = None,
    *,
    processor: SpanProcessor | None = None,
) -> TracerProvider:
    """A provider that samples new traces at the configured ratio and exports in batches.

    `on_dropped` hears how many spans each failed export lost; `processor` replaces the
    OTLP batch export (tests use an in-memory one).
    """
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.namespace": "sluice"}),
        sampler=build_sampler(settings),
    )
    if settings.enabled:
        if processor is None:
            exporter: SpanExporter = OTLPSpanExporter(
                endpoint=settings.endpoint, insecure=True, timeout=5
            )
            if on_dropped is not None:
                exporter = CountingSpanExporter(exporter, on_dropped)
            processor = BatchSpanProcessor(
                exporter,
                max_queue_size=settings.max_queue_size,
                schedule_delay_millis=settings.export_delay_ms,
                max_export_batch_size=min(512, settings.max_queue_size),
            )
        if settings.keep_errors and settings.sample_ratio < 1.0:
            processor = ExportSampledOrErrors(processor)
        provider.add_span_processor(processor)
    return provider


def client_tracing_interceptors(provider: TracerProvider) -> Sequence[grpc.aio.ClientInterceptor]:
    """Client interceptors that inject W3C traceparent and record CLIENT spans.

    Ours for both unary and server-streaming calls (see grpc_client): they end the span
    from the call's done callback, so on completion, error and cancellation alike, and
    cost a fraction of the library's aio interceptors.
    """
    tracer = provider.get_tracer("sluice.core.telemetry.grpc_client")
    return [TracedUnaryUnaryInterceptor(tracer), TracedUnaryStreamInterceptor(tracer)]


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits, or '' when there is none."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
