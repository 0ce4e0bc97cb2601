"""OpenTelemetry set-up: a tracer provider per service exporting OTLP/gRPC to telemetry."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes, AttributeValue

from sluice.core.config import MIN_SAMPLING_RATIO, TracingSettings
from sluice.core.telemetry.span_export import CountingSpanExporter, RedactingSpanExporter

if TYPE_CHECKING:
    # Only the type: core/grpcx imports this module.
    from sluice.core.grpcx.tls import ClientTls


class FailedSpans:
    """Exports the failed RPC spans of traces head sampling left out (`keep_errors`).

    Sampling design (docs/observability.md): head sampling decides which traces are exported whole
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
                # Exported whatever the head ratio: it stands for itself alone.
                attributes={**attributes, SAMPLING_RATIO: 1.0},
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


SAMPLING_RATIO = "sluice.sampling.ratio"
"""Span attribute: the probability the span was exported with, so statistics can weight
it by 1/p (telemetry/stats.py). The head ratio of its trace on sampled spans; 1.0 on a
failed RPC span when `keep_errors` exports every failure whatever the ratio."""
_STATE_KEY = "sluice"  # tracestate entry carrying the ratio the trace was sampled with


class RatioSampler(Sampler):
    """Parent-based ratio sampling that records the ratio a trace was kept with.

    The root's decision carries its ratio to every descendant, across services, in the
    W3C tracestate (`sluice=r:<ratio>`), and each sampled span gets it as the attribute
    `sluice.sampling.ratio`. A sampled parent from outside (Envoy, a web client) without
    that entry is taken to have sampled at this service's own ratio (the launcher gives
    Envoy the router's ratio; 1 when that is 0), and the entry is added from there on.
    """

    def __init__(self, ratio: float) -> None:
        self._inner = ParentBased(TraceIdRatioBased(ratio))
        # What a sampled span is taken to be kept with when no ancestor said (a ratio of
        # 0 samples no root of its own: then only "certainly", 1).
        self._ratio = ratio if ratio > 0.0 else 1.0
        self._own = _ratio_value(self._ratio)
        self._carried: dict[str, float] = {}

    def should_sample(  # noqa: PLR0917 - the SDK's Sampler signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if not result.decision.is_sampled():
            return result
        state = result.trace_state or TraceState()
        carried = state.get(_STATE_KEY)
        ratio = None
        if carried is not None:
            ratio = self._carried.get(carried)
            if ratio is None:
                ratio = _parse_ratio(carried)
                if ratio is not None and len(self._carried) < 64:
                    self._carried[carried] = ratio
            if ratio is not None and carried != _ratio_value(ratio):
                # Clamped (or spelt otherwise): the services downstream see what was used.
                state = state.update(_STATE_KEY, _ratio_value(ratio))
        if ratio is None:
            ratio = self._ratio
            if carried is None:
                state = state.add(_STATE_KEY, self._own)
            else:
                state = state.update(_STATE_KEY, self._own)
        values: dict[str, AttributeValue] = dict(result.attributes or {})
        values[SAMPLING_RATIO] = ratio
        return SamplingResult(result.decision, values, state)

    def get_description(self) -> str:
        return f"RatioSampler{{{self._ratio}}}"


def _ratio_value(ratio: float) -> str:
    return f"r:{ratio:.6g}"


def _parse_ratio(value: str) -> float | None:
    """The carried ratio, raised to MIN_SAMPLING_RATIO (core/config.py) when below it;
    None when it is not a ratio (not a number, non-finite, at most 0 or above 1)."""
    if not value.startswith("r:"):
        return None
    try:
        ratio = float(value[2:])
    except ValueError:
        return None
    if not (math.isfinite(ratio) and 0.0 < ratio <= 1.0):
        return None
    return max(MIN_SAMPLING_RATIO, ratio)


def build_sampler(settings: TracingSettings) -> Sampler:
    """Parent-based ratio sampling: a trace is whole or absent (errors aside)."""
    return RatioSampler(settings.sample_ratio)


def build_tracer_provider(
    service_name: str,
    settings: TracingSettings,
    on_dropped: Callable[[int], None] | None = None,
    *,
    processor: SpanProcessor | None = None,
    tls: ClientTls | None = None,
    redact_pii: bool = False,
) -> TracerProvider:
    """A provider that samples new traces at the configured ratio and exports in batches.

    `on_dropped` hears how many spans each failed export lost; `processor` replaces the
    OTLP batch export (tests use an in-memory one); `tls` exports over mutual TLS;
    `redact_pii` redacts every exported span first (core/privacy.py).
    """
    resource = Resource.create({"service.name": service_name, "service.namespace": "sluice"})
    provider = SluiceTracerProvider(
        resource=_FixedResource(resource.attributes, resource.schema_url),
        sampler=build_sampler(settings),
    )
    if settings.enabled:
        if processor is None:
            exporter: SpanExporter = (
                OTLPSpanExporter(endpoint=settings.endpoint, insecure=True, timeout=5)
                if tls is None
                else OTLPSpanExporter(
                    endpoint=settings.endpoint,
                    insecure=False,
                    credentials=tls.credentials,
                    channel_options=tls.options,
                    timeout=5,
                )
            )
            if redact_pii:
                exporter = RedactingSpanExporter(exporter)
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
