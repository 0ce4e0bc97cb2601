"""Sliding-window statistics over every decided trace (before sampling drops any).

Per service and RPC (SERVER spans): request rate, error rate, P50/P95/P99 latency,
time to first token and Apdex; the service dependency map (a span whose parent is in
another service is one call from that service to its own); and where time goes (self
time per span kind, slowest operations). Samples older than the window are trimmed on
every write, so memory is bounded by traffic in one window, by `max_samples` and by
`max_bytes` (an estimate, telemetry/memory.py).

Head sampling keeps only a share of the traces, but every failed RPC (`keep_errors`): so
each span counts with the weight 1/p, p being the probability it was exported with,
which the services record as `sluice.sampling.ratio` (the head ratio of its trace, or
1.0 on a failed RPC span, exported whatever the ratio). Counts and rates are the
Horvitz-Thompson estimates (sums of weights), percentiles and Apdex are weighted too.
A span without the attribute (Envoy's, older senders) counts once. Any sender can export
spans, and the ratio travels in a client's tracestate: a ratio is clamped to
[MIN_SAMPLING_RATIO, 1] (one span stands for at most 10,000 calls), a non-finite or
non-positive one is ignored; a time to first token is ignored when non-finite or
negative and held within its span's duration, so no value a span
carries can make a figure overflow (GetStats and /metrics failed on `r:1e-300`).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sluice.core.clock import Clock
from sluice.core.config import MIN_SAMPLING_RATIO
from sluice.telemetry.memory import SAMPLE_OVERHEAD_BYTES
from sluice.telemetry.sampling import ERROR, StoredSpan
from sluice.telemetry.v1 import telemetry_pb2

SERVER = otlp_trace.Span.SPAN_KIND_SERVER
# The GenAI semantic conventions' name for time to first token (seconds).
TTFT_ATTRIBUTE = "gen_ai.server.time_to_first_token"
# The probability a span was exported with (core/telemetry/tracing.py sets it).
RATIO_ATTRIBUTE = "sluice.sampling.ratio"


@dataclass(slots=True, frozen=True)
class SpanSample:
    """What the statistics need of one finished span."""

    end_s: float
    service: str
    operation: str
    kind: int
    duration_s: float
    error: bool
    ttft_s: float | None
    self_s: float
    weight: float = 1.0
    """How many calls the span stands for: 1 / the probability it was exported with."""


@dataclass(slots=True, frozen=True)
class EdgeSample:
    """One call from one service to another."""

    end_s: float
    client: str
    server: str
    error: bool
    weight: float = 1.0
    """The called span's weight."""


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def weighted_percentile(sorted_pairs: list[tuple[float, float]], q: float) -> float:
    """Nearest-rank percentile of ascending (value, weight) pairs: the first value whose
    cumulative weight reaches q of the total (with unit weights, `percentile`)."""
    if not sorted_pairs:
        return 0.0
    target = q * sum(weight for _, weight in sorted_pairs)
    cumulative = 0.0
    for value, weight in sorted_pairs:
        cumulative += weight
        if cumulative >= target:
            return value
    return sorted_pairs[-1][0]


def apdex(
    durations_s: Iterable[float],
    errors: Iterable[bool],
    t_s: float,
    weights: Iterable[float] | None = None,
) -> float:
    """(satisfied + tolerating / 2) / n; satisfied <= T < tolerating <= 4T; errors frustrate.
    With `weights`, each sample counts its weight."""
    satisfied = tolerating = n = 0.0
    counted = weights if weights is not None else itertools.repeat(1.0)
    for duration, error, weight in zip(durations_s, errors, counted, strict=False):
        n += weight
        if error:
            continue
        if duration <= t_s:
            satisfied += weight
        elif duration <= 4 * t_s:
            tolerating += weight
    return (satisfied + tolerating / 2) / n if n else 0.0


def _number(value: otlp_common.AnyValue) -> float | None:
    """The attribute's finite number, or None."""
    kind = value.WhichOneof("value")
    if kind == "double_value":
        number = value.double_value
    elif kind == "int_value":
        number = float(value.int_value)
    else:
        return None
    return number if math.isfinite(number) else None


def weight_of(ratio: float | None) -> float:
    """1 / the probability a span was exported with, the ratio clamped to
    [MIN_SAMPLING_RATIO, 1]; 1 for a missing, zero or negative one."""
    if ratio is None or ratio <= 0.0:
        return 1.0
    return 1.0 / min(1.0, max(MIN_SAMPLING_RATIO, ratio))


def _count(weights: float) -> int:
    """A sum of weights as the proto's int64 count, whatever it adds up to."""
    return round(min(weights, float(2**62)))


def samples_of(spans: list[StoredSpan]) -> tuple[list[SpanSample], list[EdgeSample]]:
    """Span samples (with self time) and cross-service call edges of one trace's spans."""
    by_id = {s.span.span_id: s for s in spans}
    children_ns: dict[bytes, int] = defaultdict(int)
    for item in spans:
        span = item.span
        if span.parent_span_id in by_id:
            children_ns[span.parent_span_id] += max(
                0, span.end_time_unix_nano - span.start_time_unix_nano
            )
    samples: list[SpanSample] = []
    edges: list[EdgeSample] = []
    for item in spans:
        span = item.span
        duration_ns = max(0, span.end_time_unix_nano - span.start_time_unix_nano)
        ttft = None
        weight = 1.0
        for attribute in span.attributes:
            if attribute.key == TTFT_ATTRIBUTE:
                ttft = _number(attribute.value)
            elif attribute.key == RATIO_ATTRIBUTE:
                weight = weight_of(_number(attribute.value))
        if ttft is not None:
            # The first token comes within the span: a larger or negative claim is noise.
            ttft = None if ttft < 0 else min(ttft, duration_ns / 1e9)
        end_s = span.end_time_unix_nano / 1e9
        error = span.status.code == ERROR
        samples.append(
            SpanSample(
                end_s=end_s,
                service=item.service_name,
                operation=span.name,
                kind=span.kind,
                duration_s=duration_ns / 1e9,
                error=error,
                ttft_s=ttft,
                self_s=max(0, duration_ns - children_ns.get(span.span_id, 0)) / 1e9,
                weight=weight,
            )
        )
        parent = by_id.get(span.parent_span_id)
        if parent is not None and parent.service_name != item.service_name:
            edges.append(EdgeSample(end_s, parent.service_name, item.service_name, error, weight))
    return samples, edges


def _span_sample_bytes(sample: SpanSample) -> int:
    return SAMPLE_OVERHEAD_BYTES + len(sample.service) + len(sample.operation)


def _edge_sample_bytes(sample: EdgeSample) -> int:
    return SAMPLE_OVERHEAD_BYTES + len(sample.client) + len(sample.server)


class WindowStats:
    """Samples of the last `max_window_s` seconds and the figures computed from them."""

    def __init__(
        self,
        *,
        clock: Clock,
        max_window_s: int,
        apdex_t_ms: float,
        max_samples: int,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self._clock = clock
        self.max_window_s = max_window_s
        self.apdex_t_ms = apdex_t_ms
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.bytes_used = 0
        """Estimated bytes of the held samples (telemetry/memory.py)."""
        self._spans: deque[SpanSample] = deque()
        self._edges: deque[EdgeSample] = deque()

    def record(self, spans: list[StoredSpan]) -> None:
        """Add the spans of one trace (or late spans of one)."""
        samples, edges = samples_of(spans)
        self._spans.extend(samples)
        self._edges.extend(edges)
        self.bytes_used += sum(map(_span_sample_bytes, samples))
        self.bytes_used += sum(map(_edge_sample_bytes, edges))
        self._trim()

    def _trim(self) -> None:
        oldest = self._clock.wall() - self.max_window_s
        spans, edges = self._spans, self._edges
        while spans and (
            spans[0].end_s < oldest or len(spans) > self.max_samples or self._over_bytes()
        ):
            self.bytes_used -= _span_sample_bytes(spans.popleft())
        while edges and (
            edges[0].end_s < oldest or len(edges) > self.max_samples or self._over_bytes()
        ):
            self.bytes_used -= _edge_sample_bytes(edges.popleft())

    def _over_bytes(self) -> bool:
        return self.bytes_used > self.max_bytes

    def __len__(self) -> int:
        return len(self._spans)

    def window(self, window_s: int) -> int:
        """The window used for a request: 0 means the configured one; never longer."""
        return self.max_window_s if window_s <= 0 else min(window_s, self.max_window_s)

    def _recent(self, samples: Iterable[SpanSample], window_s: int) -> Iterator[SpanSample]:
        oldest = self._clock.wall() - window_s
        return (s for s in samples if s.end_s >= oldest)

    def operations(self, window_s: int = 0, service: str = "") -> telemetry_pb2.GetStatsResponse:
        """Statistics per (service, SERVER span name) over the window."""
        window = self.window(window_s)
        self._trim()
        groups: dict[tuple[str, str], list[SpanSample]] = defaultdict(list)
        for sample in self._recent(self._spans, window):
            if sample.kind == SERVER and (not service or sample.service == service):
                groups[(sample.service, sample.operation)].append(sample)
        t_s = self.apdex_t_ms / 1000
        response = telemetry_pb2.GetStatsResponse(window_s=window, apdex_t_ms=self.apdex_t_ms)
        for (svc, operation), group in sorted(groups.items()):
            total = sum(s.weight for s in group)
            durations = sorted((s.duration_s * 1000, s.weight) for s in group)
            ttfts = sorted((s.ttft_s * 1000, s.weight) for s in group if s.ttft_s is not None)
            errors = sum(s.weight for s in group if s.error)
            response.operations.append(
                telemetry_pb2.OperationStats(
                    service_name=svc,
                    operation=operation,
                    count=_count(total),
                    request_rate=total / window,
                    error_rate=errors / total,
                    p50_ms=weighted_percentile(durations, 0.50),
                    p95_ms=weighted_percentile(durations, 0.95),
                    p99_ms=weighted_percentile(durations, 0.99),
                    ttft_p50_ms=weighted_percentile(ttfts, 0.50),
                    ttft_p95_ms=weighted_percentile(ttfts, 0.95),
                    apdex=apdex(
                        (s.duration_s for s in group),
                        (s.error for s in group),
                        t_s,
                        (s.weight for s in group),
                    ),
                    spans=len(group),
                )
            )
        return response

    def graph(self, window_s: int = 0) -> telemetry_pb2.GetServiceGraphResponse:
        """Calls and errors per (client service, server service) over the window."""
        window = self.window(window_s)
        self._trim()
        oldest = self._clock.wall() - window
        counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for edge in self._edges:
            if edge.end_s >= oldest:
                count = counts[(edge.client, edge.server)]
                count[0] += edge.weight
                if edge.error:
                    count[1] += edge.weight
        response = telemetry_pb2.GetServiceGraphResponse()
        for (client, server), (calls, errors) in sorted(counts.items()):
            response.edges.append(
                telemetry_pb2.ServiceEdge(
                    client=client,
                    server=server,
                    calls=_count(calls),
                    errors=_count(errors),
                    error_rate=errors / calls,
                )
            )
        return response

    def breakdown(self, window_s: int = 0, limit: int = 0) -> telemetry_pb2.GetBreakdownResponse:
        """Slowest operations by p99 and the share of self time per span kind."""
        window = self.window(window_s)
        self._trim()
        groups: dict[tuple[str, str, int], list[SpanSample]] = defaultdict(list)
        by_kind: dict[int, float] = defaultdict(float)
        for sample in self._recent(self._spans, window):
            groups[(sample.service, sample.operation, sample.kind)].append(sample)
            by_kind[sample.kind] += sample.self_s * sample.weight
        slowest = []
        for (svc, operation, kind), group in groups.items():
            total = sum(s.weight for s in group)
            durations = sorted((s.duration_s * 1000, s.weight) for s in group)
            slowest.append(
                telemetry_pb2.SlowOperation(
                    service_name=svc,
                    operation=operation,
                    kind=otlp_trace.Span.SpanKind.Name(otlp_trace.Span.SpanKind.ValueType(kind)),
                    count=_count(total),
                    p99_ms=weighted_percentile(durations, 0.99),
                    mean_self_ms=sum(s.self_s * s.weight for s in group) * 1000 / total,
                )
            )
        slowest.sort(key=lambda op: (-op.p99_ms, op.service_name, op.operation))
        total = sum(by_kind.values())
        kinds = [
            telemetry_pb2.KindShare(
                kind=otlp_trace.Span.SpanKind.Name(otlp_trace.Span.SpanKind.ValueType(kind)),
                self_time_ms=seconds * 1000,
                share=seconds / total if total else 0.0,
            )
            for kind, seconds in by_kind.items()
        ]
        kinds.sort(key=lambda k: (-k.self_time_ms, k.kind))
        return telemetry_pb2.GetBreakdownResponse(
            window_s=window, slowest=slowest[: limit or 10], kinds=kinds
        )


def service_label(service_name: str) -> str:
    """`sluice-router` -> `router`: the `service` label value the RPC metrics use."""
    return service_name.removeprefix("sluice-")


class StatsCollector(Collector):
    """Exports the window statistics to Prometheus at scrape time.

    Labels match the RED metrics (`sluice_rpc_*{service, method}`): `service` without the
    `sluice-` prefix of service.name, `method` the span name (the gRPC method path).
    """

    def __init__(self, stats: WindowStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Gauges per (service, method) and per service-graph edge."""
        labels = ["service", "method"]
        rate = GaugeMetricFamily(
            "sluice_slo_request_rate", "Requests/s over the stats window.", labels=labels
        )
        errors = GaugeMetricFamily(
            "sluice_slo_error_ratio", "Share of failed requests over the window.", labels=labels
        )
        latency = GaugeMetricFamily(
            "sluice_slo_latency_seconds",
            "Latency percentiles over the window (nearest rank).",
            labels=[*labels, "quantile"],
        )
        ttft = GaugeMetricFamily(
            "sluice_slo_time_to_first_token_seconds",
            "Time-to-first-token percentiles over the window.",
            labels=[*labels, "quantile"],
        )
        score = GaugeMetricFamily(
            "sluice_slo_apdex", "Apdex over the window with the configured T.", labels=labels
        )
        for op in self._stats.operations().operations:
            key = [service_label(op.service_name), op.operation]
            rate.add_metric(key, op.request_rate)
            errors.add_metric(key, op.error_rate)
            for quantile, value in (("0.5", op.p50_ms), ("0.95", op.p95_ms), ("0.99", op.p99_ms)):
                latency.add_metric([*key, quantile], value / 1000)
            for quantile, value in (("0.5", op.ttft_p50_ms), ("0.95", op.ttft_p95_ms)):
                ttft.add_metric([*key, quantile], value / 1000)
            score.add_metric(key, op.apdex)
        calls = GaugeMetricFamily(
            "sluice_service_graph_calls",
            "Calls between services over the stats window.",
            labels=["client", "server"],
        )
        failed = GaugeMetricFamily(
            "sluice_service_graph_errors",
            "Failed calls between services over the stats window.",
            labels=["client", "server"],
        )
        for edge in self._stats.graph().edges:
            pair = [service_label(edge.client), service_label(edge.server)]
            calls.add_metric(pair, edge.calls)
            failed.add_metric(pair, edge.errors)
        yield from (rate, errors, latency, ttft, score, calls, failed)
