"""Recent spans, grouped by trace, bounded in traces and spans per trace.

Ingest keeps references to the received OTLP span messages and converts them only
when a trace is read, so the per-span cost on the hot path is one dict append.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace

from sluice.telemetry.v1 import telemetry_pb2


@dataclass(slots=True)
class StoredSpan:
    """An OTLP span and the service that emitted it."""

    service_name: str
    span: otlp_trace.Span


def _value_text(value: otlp_common.AnyValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


def _service_name(resource_spans: otlp_trace.ResourceSpans) -> str:
    for attribute in resource_spans.resource.attributes:
        if attribute.key == "service.name":
            return attribute.value.string_value
    return "unknown"


class SpanStore:
    """Traces by id, oldest evicted first."""

    def __init__(self, max_traces: int, max_spans_per_trace: int) -> None:
        self._traces: OrderedDict[bytes, list[StoredSpan]] = OrderedDict()
        self._max_traces = max_traces
        self._max_spans = max_spans_per_trace
        self.dropped_spans = 0

    def add(self, resource_spans_list: list[otlp_trace.ResourceSpans]) -> int:
        """Store every span of an OTLP export; returns how many were rejected."""
        rejected = 0
        traces = self._traces
        for resource_spans in resource_spans_list:
            service = _service_name(resource_spans)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans = traces.get(span.trace_id)
                    if spans is None:
                        spans = traces[span.trace_id] = []
                        if len(traces) > self._max_traces:
                            traces.popitem(last=False)
                    if len(spans) >= self._max_spans:
                        rejected += 1
                        continue
                    spans.append(StoredSpan(service, span))
        self.dropped_spans += rejected
        return rejected

    def trace(self, trace_id: bytes) -> list[telemetry_pb2.Span]:
        """The trace's spans in start order, converted for reading."""
        stored = self._traces.get(trace_id, [])
        spans = [
            telemetry_pb2.Span(
                span_id=item.span.span_id.hex(),
                parent_span_id=item.span.parent_span_id.hex(),
                name=item.span.name,
                service_name=item.service_name,
                kind=otlp_trace.Span.SpanKind.Name(item.span.kind),
                start_time_unix_nano=item.span.start_time_unix_nano,
                end_time_unix_nano=item.span.end_time_unix_nano,
                status_code=otlp_trace.Status.StatusCode.Name(item.span.status.code),
                status_message=item.span.status.message,
                attributes={a.key: _value_text(a.value) for a in item.span.attributes},
                event_names=[event.name for event in item.span.events],
            )
            for item in stored
        ]
        spans.sort(key=lambda s: s.start_time_unix_nano)
        return spans

    def __len__(self) -> int:
        return len(self._traces)
