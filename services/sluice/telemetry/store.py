"""Recent kept traces, bounded in traces and in bytes, with lookup by id and search.

Ingest keeps references to the received OTLP span messages and converts them only
when a trace is read, so the per-span cost on the hot path is one list append.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace

from sluice.telemetry.memory import span_bytes
from sluice.telemetry.sampling import ERROR, StoredSpan, trace_duration_ns
from sluice.telemetry.v1 import telemetry_pb2

MAX_SEARCH_RESULTS = 1000
DEFAULT_SEARCH_RESULTS = 20


def value_text(value: otlp_common.AnyValue) -> str:
    """An attribute value as a string (as shown and as searched)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "array_value":
        return ",".join(value_text(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return ",".join(f"{kv.key}={value_text(kv.value)}" for kv in value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return str(getattr(value, kind))


def service_name(resource_spans: otlp_trace.ResourceSpans) -> str:
    """The service.name resource attribute ('unknown' when absent)."""
    for attribute in resource_spans.resource.attributes:
        if attribute.key == "service.name":
            return attribute.value.string_value
    return "unknown"


def to_read(items: list[StoredSpan]) -> list[telemetry_pb2.Span]:
    """Spans converted for reading, in start order."""
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
            attributes={a.key: value_text(a.value) for a in item.span.attributes},
            event_names=[event.name for event in item.span.events],
        )
        for item in items
    ]
    spans.sort(key=lambda s: s.start_time_unix_nano)
    return spans


def _has_attributes(items: list[StoredSpan], wanted: Mapping[str, str]) -> bool:
    for item in items:
        found = {a.key: a.value for a in item.span.attributes if a.key in wanted}
        if len(found) == len(wanted) and all(
            value_text(found[key]) == value for key, value in wanted.items()
        ):
            return True
    return False


def summary(trace_id: bytes, items: list[StoredSpan]) -> telemetry_pb2.TraceSummary:
    """One line about a trace."""
    ids = {item.span.span_id for item in items}
    roots = [item for item in items if item.span.parent_span_id not in ids]
    root = min(roots or items, key=lambda item: item.span.start_time_unix_nano)
    return telemetry_pb2.TraceSummary(
        trace_id=trace_id.hex(),
        root_service_name=root.service_name,
        root_span_name=root.span.name,
        start_time_unix_nano=min(item.span.start_time_unix_nano for item in items),
        duration_ms=trace_duration_ns(items) / 1e6,
        span_count=len(items),
        error=any(item.span.status.code == ERROR for item in items),
        service_names=sorted({item.service_name for item in items}),
    )


class SpanStore:
    """Kept traces by id, the least recently written evicted first once there are more
    than `max_traces` or they take more than `max_bytes` (telemetry/memory.py)."""

    def __init__(self, max_traces: int, max_spans_per_trace: int, max_bytes: int) -> None:
        self._traces: OrderedDict[bytes, list[StoredSpan]] = OrderedDict()
        self._sizes: dict[bytes, int] = {}
        self._max_traces = max_traces
        self._max_spans = max_spans_per_trace
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self.evicted = 0
        """Traces dropped to stay within the bounds."""

    def add(self, trace_id: bytes, items: list[StoredSpan]) -> int:
        """Store spans of one trace; returns how many were over the per-trace limits."""
        spans = self._traces.get(trace_id)
        if spans is None:
            spans = self._traces[trace_id] = []
            self._sizes[trace_id] = 0
        else:
            self._traces.move_to_end(trace_id)
        room = max(0, self._max_spans - len(spans))
        added = 0
        taken = 0
        for item in items[:room]:
            size = span_bytes(item)
            if self._sizes[trace_id] + added + size > self.max_bytes:
                break  # one trace alone never holds more than the whole bound
            added += size
            taken += 1
        spans.extend(items[:taken])
        self._sizes[trace_id] += added
        self.bytes_used += added
        while len(self._traces) > 1 and (
            len(self._traces) > self._max_traces or self.bytes_used > self.max_bytes
        ):
            oldest, _ = self._traces.popitem(last=False)
            self.bytes_used -= self._sizes.pop(oldest)
            self.evicted += 1
        return len(items) - taken

    def erase(self, match: Callable[[otlp_trace.Span], bool]) -> list[tuple[bytes, int]]:
        """Drop every trace with a span that `match`es; returns (trace id, spans) of each."""
        erased = [
            (trace_id, len(items))
            for trace_id, items in self._traces.items()
            if any(match(item.span) for item in items)
        ]
        for trace_id, _ in erased:
            del self._traces[trace_id]
            self.bytes_used -= self._sizes.pop(trace_id)
        return erased

    def get(self, trace_id: bytes) -> list[StoredSpan]:
        """The stored spans of a trace (empty when unknown)."""
        return list(self._traces.get(trace_id, []))

    def search(
        self, request: telemetry_pb2.SearchTracesRequest
    ) -> list[telemetry_pb2.TraceSummary]:
        """Stored traces matching every filter of the request, newest first."""
        limit = min(request.limit or DEFAULT_SEARCH_RESULTS, MAX_SEARCH_RESULTS)
        min_ns = request.min_duration_ms * 1_000_000
        found: list[telemetry_pb2.TraceSummary] = []
        for trace_id, items in reversed(self._traces.items()):
            if request.service_name and all(
                item.service_name != request.service_name for item in items
            ):
                continue
            if request.status != telemetry_pb2.TRACE_STATUS_UNSPECIFIED:
                error = any(item.span.status.code == ERROR for item in items)
                if error != (request.status == telemetry_pb2.TRACE_STATUS_ERROR):
                    continue
            if min_ns and trace_duration_ns(items) < min_ns:
                continue
            if request.attributes and not _has_attributes(items, request.attributes):
                continue
            found.append(summary(trace_id, items))
        found.sort(key=lambda s: s.start_time_unix_nano, reverse=True)
        return found[:limit]

    def __len__(self) -> int:
        return len(self._traces)
