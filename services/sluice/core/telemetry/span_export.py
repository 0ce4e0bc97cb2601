"""Wrappers of the span exporter: counting the spans that never reach the telemetry
service, and redacting PII before spans leave the process (`privacy.redact_pii`).

Tracing is best effort: when the telemetry service is down, serving goes on and the
batch exporter gives up on the spans. This wrapper makes that loss visible as a
metric instead of a log line nobody reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status
from opentelemetry.util.types import Attributes, AttributeValue

from sluice.core.privacy import redact


class CountingSpanExporter(SpanExporter):
    """Delegates to an exporter and reports the size of every failed batch."""

    def __init__(self, inner: SpanExporter, on_dropped: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_dropped = on_dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            self._on_dropped(len(spans))
            raise
        if result is not SpanExportResult.SUCCESS:
            self._on_dropped(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _redacted_value(value: AttributeValue) -> AttributeValue:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return [redact(item) if isinstance(item, str) else item for item in value]
    return value


def _redacted_attributes(attributes: Attributes) -> dict[str, AttributeValue]:
    return {key: _redacted_value(value) for key, value in (attributes or {}).items()}


def redacted_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` with its attributes, events and status message redacted
    (core/privacy.py); ids, times and names are kept."""
    status = span.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_redacted_attributes(span.attributes),
        events=[
            Event(event.name, _redacted_attributes(event.attributes), event.timestamp)
            for event in span.events
        ],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanExporter(SpanExporter):
    """Redacts PII from every span before the inner exporter sends it (the batch
    processor's thread does the work, off the event loop)."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([redacted_span(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)
