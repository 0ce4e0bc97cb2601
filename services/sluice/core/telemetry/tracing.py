"""OpenTelemetry set-up: a tracer provider per service exporting OTLP/gRPC to telemetry."""

from __future__ import annotations

import time
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from sluice.core.config import TracingSettings
from sluice.core.telemetry.span_export import CountingSpanExporter


class FailedSpans:
    """Exports the failed RPC spans of traces head sampling left out (`keep_errors`).

    Sampling design (SPEC §5): head sampling decides which traces are exported whole
    (sampled flag, propagated in traceparent). Spans of the other traces are not
    recorded at all: the SDK hands out a non-recording span that only carries the ids,
    which is what makes a low ratio cheap. The RPC spans (core/telemetry/grpc_server.py
    and grpc_client.py) note when an unsampled span started and, only when the call
    ends with a server error, build the finished span after the fact here and pass it to
    the export, marked sampled, with its real ids and parent. The telemetry service's tail
    sampler keeps it, so every failure is seen whatever the head ratio. What such a span
    lacks: attributes and events added during the call (GenAI attributes, retries), and
    its successful siblings.
    """

    def __init__(self, processor: SpanProcessor, resource: Resource) -> None:
        self._processor = processor
        self._resource = resource
        self._scope = InstrumentationScope("sluice.core.telemetry")

    def export(
        self,
        name: str,
        kind: trace.SpanKind,
        *,
        context: SpanContext,
        parent: SpanContext | None,
        start_ns: int,
        attributes: dict[str, AttributeValue],
        description: str,
    ) -> None:
        """Export one failed span that was not recorded."""
        sampled = SpanContext(
            context.trace_id,
            context.span_id,
            False,
            TraceFlags(TraceFlags.SAMPLED),
            context.trace_state,
        )
        self._processor.on_end(
            ReadableSpan(
                name=name,
                context=sampled,
                parent=parent if parent is not None and parent.is_valid else None,
                resource=self._resource,
                attributes=attributes,
                kind=kind,
                status=Status(StatusCode.ERROR, description),
                start_time=start_ns,
                end_time=time.time_ns(),
                instrumentation_scope=self._scope,
            )
        )


class _FixedResource(Resource):
    """A Resource whose hash is computed once.

    The OTLP encoder groups every exported span by resource, and Resource hashes by
    JSON-dumping its attributes each time: ~2% of the router's CPU at ratio 1. A
    resource's attributes never change, so the hash can be kept.
    """

    _cached_hash: int | None = None

    def __hash__(self) -> int:
        if self._cached_hash is None:
            self._cached_hash = super().__hash__()
        return self._cached_hash

    def __eq__(self, other: object) -> bool:
        return self is other or super().__eq__(other)


class SluiceTracerProvider(TracerProvider):
    """The SDK's provider plus, with `keep_errors` below ratio 1, the failed-span export."""

    failed_spans: FailedSpans | None = None


def failed_spans_of(provider: TracerProvider) -> FailedSpans | None:
    """The provider's failed-span export, if it has one (a plain SDK provider has none)."""
    return getattr(provider, "failed_spans", None)


def build_sampler(settings: TracingSettings) -> Sampler:
    """Parent-based ratio sampling: a trace is whole or absent (errors aside)."""
    return ParentBased(TraceIdRatioBased(settings.sample_ratio))


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
    resource = Resource.create({"service.name": service_name, "service.namespace": "sluice"})
    provider = SluiceTracerProvider(
        resource=_FixedResource(resource.attributes, resource.schema_url),
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
        provider.add_span_processor(processor)
        if settings.keep_errors and settings.sample_ratio < 1.0:
            provider.failed_spans = FailedSpans(processor, provider.resource)
    return provider


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits, or '' when there is none."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
