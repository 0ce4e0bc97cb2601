"""Tail-based sampling: spans are held per trace and one decision is taken per whole trace.

A trace is decided once no span of it arrived for `decision_wait_s` (it is quiet, so
probably complete). It is kept when any span failed, when it lasted at least
`slow_threshold_ms`, or else with probability `keep_ratio`, taken from the trace id
the way OpenTelemetry's TraceIdRatioBased does (its lower 64 bits against
ratio * 2^64), so every replica decides the same. Late spans of a decided trace follow
the decision already taken. Memory is bounded: at most `max_pending_traces` traces wait,
holding at most `max_pending_bytes` (estimated, telemetry/memory.py), beyond which the
oldest are decided early; at most `max_spans_per_trace` spans each. The spans of a kept
trace are copied out of the export requests they came in (`detached`), so what the store
and the forwarders hold is the kept spans alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar, cast

from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace

from sluice.core.clock import Clock
from sluice.telemetry.memory import DECISION_BYTES, span_bytes

ERROR = otlp_trace.Status.STATUS_CODE_ERROR
_M = TypeVar("_M", resource_pb2.Resource, otlp_common.InstrumentationScope)


@dataclass(slots=True)
class StoredSpan:
    """An OTLP span with the service, resource and scope it was exported under."""

    service_name: str
    span: otlp_trace.Span
    resource: resource_pb2.Resource
    scope: otlp_common.InstrumentationScope


def detached(items: list[StoredSpan]) -> list[StoredSpan]:
    """Copies of one trace's spans that share no memory with their export requests.

    A span parsed from an export shares the whole request's memory (upb keeps one arena
    per parsed message): holding one span keeps every span of that export alive, those
    of dropped traces too. With a keep ratio of 0.1, a store bounded at 8 MiB (estimated)
    held ~100 MB this way. The copies live in one arena per trace (a ScopeSpans holder),
    freed with the trace; resources and scopes are copied once per trace. ~1.5 us a span.
    """
    holder = otlp_trace.ScopeSpans()
    holder.spans.extend(item.span for item in items)
    copies: dict[int, Any] = {}

    def own(message: _M) -> _M:
        copy = copies.get(id(message))
        if copy is None:
            copy = copies[id(message)] = type(message)()
            copy.CopyFrom(message)
        return cast("_M", copy)

    return [
        StoredSpan(item.service_name, span, own(item.resource), own(item.scope))
        for item, span in zip(items, holder.spans, strict=True)
    ]


class Decision(Enum):
    """Why a trace was kept or dropped (the label of sluice_telemetry_traces_total)."""

    KEPT_ERROR = "kept_error"
    KEPT_SLOW = "kept_slow"
    KEPT_SAMPLED = "kept_sampled"
    DROPPED = "dropped"

    @property
    def kept(self) -> bool:
        """Whether the trace is stored and forwarded."""
        return self is not Decision.DROPPED


@dataclass(slots=True)
class PendingTrace:
    """Spans of a trace not decided yet."""

    spans: list[StoredSpan] = field(default_factory=list)
    last_seen: float = 0.0
    error: bool = False
    size: int = 0
    """Estimated bytes of the spans."""


@dataclass(slots=True)
class DecidedTrace:
    """A trace and the decision taken on it (spans are the ones decided at once)."""

    trace_id: bytes
    spans: list[StoredSpan]
    decision: Decision
    late: bool = False


def trace_duration_ns(spans: list[StoredSpan]) -> int:
    """Earliest start to latest end."""
    if not spans:
        return 0
    start = min(s.span.start_time_unix_nano for s in spans)
    end = max(s.span.end_time_unix_nano for s in spans)
    return max(0, end - start)


def ratio_keeps(trace_id: bytes, ratio: float) -> bool:
    """OpenTelemetry's TraceIdRatioBased rule: lower 64 bits of the id below ratio * 2^64."""
    bound = round(ratio * (1 << 64))
    return int.from_bytes(trace_id[-8:], "big") < bound


class TailSampler:
    """Holds spans per trace until the trace is quiet, then decides keep or drop."""

    def __init__(
        self,
        *,
        clock: Clock,
        decision_wait_s: float,
        keep_ratio: float,
        slow_threshold_ms: float,
        max_pending_traces: int,
        max_spans_per_trace: int,
        max_pending_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._clock = clock
        self._wait = decision_wait_s
        self._ratio = keep_ratio
        self._slow_ns = int(slow_threshold_ms * 1_000_000)
        self._max_pending = max_pending_traces
        self._max_spans = max_spans_per_trace
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        """Estimated bytes of the spans waiting for a decision."""
        # Insertion order = order of last activity (moved to the end on every span).
        self._pending: OrderedDict[bytes, PendingTrace] = OrderedDict()
        # Recent decisions, for late spans; bounded like the pending set (fixed-size
        # entries: DECISION_BYTES each, reported as the store `decisions`).
        self._decided: OrderedDict[bytes, Decision] = OrderedDict()
        self._forced: list[DecidedTrace] = []
        self._late: dict[bytes, tuple[Decision, list[StoredSpan]]] = {}

    @property
    def max_decided_bytes(self) -> int:
        """Most bytes the remembered decisions take (`max_pending_traces` of them)."""
        return self._max_pending * DECISION_BYTES

    @property
    def decided_bytes(self) -> int:
        """Estimated bytes of the remembered decisions."""
        return len(self._decided) * DECISION_BYTES

    def add(self, item: StoredSpan) -> bool:
        """Hold one span; False when it is rejected (its trace is at the span limit)."""
        trace_id = item.span.trace_id
        decision = self._decided.get(trace_id)
        if decision is not None:
            # A late span: it follows the decision taken (kept traces get it forwarded).
            if decision.kept:
                self._late.setdefault(trace_id, (decision, []))[1].append(item)
            return True
        pending = self._pending.get(trace_id)
        if pending is None:
            pending = self._pending[trace_id] = PendingTrace()
            if len(self._pending) > self._max_pending:
                self._force_oldest()
        else:
            self._pending.move_to_end(trace_id)
        if len(pending.spans) >= self._max_spans:
            return False
        pending.spans.append(item)
        size = span_bytes(item)
        pending.size += size
        self.pending_bytes += size
        while self.pending_bytes > self.max_pending_bytes and self._pending:
            self._force_oldest()
        pending.last_seen = self._clock.monotonic()
        if item.span.status.code == ERROR:
            pending.error = True
        return True

    def _force_oldest(self) -> None:
        """Decide the least recently active trace now (a bound was reached)."""
        oldest_id, oldest = self._pending.popitem(last=False)
        self.pending_bytes -= oldest.size
        self._forced.append(self._decide(oldest_id, oldest))

    def erase(self, match: Callable[[otlp_trace.Span], bool]) -> list[tuple[bytes, int]]:
        """Drop every undecided trace (and decided, not yet routed one) with a span that
        `match`es; returns (trace id, spans) of each. Their late spans are dropped too."""
        erased: list[tuple[bytes, int]] = []
        for trace_id, pending in list(self._pending.items()):
            if any(match(item.span) for item in pending.spans):
                del self._pending[trace_id]
                self.pending_bytes -= pending.size
                erased.append((trace_id, len(pending.spans)))
        kept: list[DecidedTrace] = []
        for decided in self._forced:
            if any(match(item.span) for item in decided.spans):
                erased.append((decided.trace_id, len(decided.spans)))
            else:
                kept.append(decided)
        self._forced = kept
        for trace_id, (_decision, late) in list(self._late.items()):
            if any(match(item.span) for item in late):
                del self._late[trace_id]
                erased.append((trace_id, len(late)))
        self.forget_later_spans([trace_id for trace_id, _ in erased])
        return erased

    def forget_later_spans(self, trace_ids: list[bytes]) -> None:
        """Drop spans of these traces that arrive from now on (erased elsewhere)."""
        for trace_id in trace_ids:
            self._decided[trace_id] = Decision.DROPPED
            self._decided.move_to_end(trace_id)
            self._late.pop(trace_id, None)
        while len(self._decided) > self._max_pending:
            self._decided.popitem(last=False)

    def pending(self, trace_id: bytes) -> list[StoredSpan]:
        """Spans of a trace still waiting for its decision (empty when none)."""
        pending = self._pending.get(trace_id)
        return list(pending.spans) if pending else []

    def due(self, *, flush: bool = False) -> list[DecidedTrace]:
        """Decide every trace quiet for the decision wait (all of them with flush=True)."""
        decided, self._forced = self._forced, []
        for trace_id, (decision, late) in self._late.items():
            decided.append(DecidedTrace(trace_id, detached(late), decision, late=True))
        self._late = {}
        cutoff = self._clock.monotonic() - self._wait
        while self._pending:
            trace_id, pending = next(iter(self._pending.items()))
            if not flush and pending.last_seen > cutoff:
                break
            del self._pending[trace_id]
            self.pending_bytes -= pending.size
            decided.append(self._decide(trace_id, pending))
        return decided

    def _decide(self, trace_id: bytes, pending: PendingTrace) -> DecidedTrace:
        if pending.error:
            decision = Decision.KEPT_ERROR
        elif trace_duration_ns(pending.spans) >= self._slow_ns:
            decision = Decision.KEPT_SLOW
        elif ratio_keeps(trace_id, self._ratio):
            decision = Decision.KEPT_SAMPLED
        else:
            decision = Decision.DROPPED
        self._decided[trace_id] = decision
        if len(self._decided) > self._max_pending:
            self._decided.popitem(last=False)
        spans = detached(pending.spans) if decision.kept else pending.spans
        return DecidedTrace(trace_id, spans, decision)

    def __len__(self) -> int:
        return len(self._pending)
