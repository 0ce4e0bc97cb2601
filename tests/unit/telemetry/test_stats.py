"""Window statistics against a brute-force computation over the same spans."""

from __future__ import annotations

import math
import os
import random

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from sluice.core.config import MIN_SAMPLING_RATIO
from sluice.telemetry.sampling import StoredSpan
from sluice.telemetry.stats import (
    RATIO_ATTRIBUTE,
    TTFT_ATTRIBUTE,
    StatsCollector,
    WindowStats,
    service_label,
    weighted_percentile,
)
from sluice.telemetry.v1 import telemetry_pb2
from tests.support import FakeClock, sample_value
from tests.unit.telemetry.spans import attr, stored

SEC = 1_000_000_000
APDEX_T_MS = 40.0


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def random_traces(
    clock: FakeClock, rng: random.Random, n: int, ratios: tuple[float, ...] = ()
) -> list[list[StoredSpan]]:
    """Router -> (limiter, provider) traces ending over the last two minutes; with
    `ratios`, each trace's spans say they were sampled with one of them."""
    now_ns = int(clock.wall() * SEC)
    traces = []
    for _ in range(n):
        trace_id = os.urandom(16)
        end = now_ns - rng.randrange(0, 120 * SEC)
        total = rng.randrange(1, 300) * 1_000_000
        start = end - total
        root_id = os.urandom(8)
        spans = [
            stored(
                "router",
                trace_id=trace_id,
                span_id=root_id,
                name=rng.choice(["Generate", "Count"]),
                start_ns=start,
                end_ns=end,
                error=rng.random() < 0.1,
                attributes={"gen_ai.server.time_to_first_token": total / SEC / 3},
            ),
            stored(
                "limiter",
                trace_id=trace_id,
                parent=root_id,
                name="Acquire",
                start_ns=start,
                end_ns=start + total // 10,
                error=rng.random() < 0.05,
            ),
            stored(
                "provider",
                trace_id=trace_id,
                parent=root_id,
                name="Stream",
                start_ns=start + total // 10,
                end_ns=end,
            ),
        ]
        if ratios:
            ratio = rng.choice(ratios)
            for item in spans:
                item.span.attributes.append(attr(RATIO_ATTRIBUTE, ratio))
        traces.append(spans)
    return traces


def weight_of(item: StoredSpan) -> int:
    for a in item.span.attributes:
        if a.key == RATIO_ATTRIBUTE:
            return round(1 / a.value.double_value)
    return 1


def expanded(traces: list[list[StoredSpan]]) -> list[list[StoredSpan]]:
    """The population the sample stands for: each trace repeated 1/ratio times."""
    return [spans for spans in traces for _ in range(weight_of(spans[0]))]


def assert_matches_brute_force(
    got_ops: list[telemetry_pb2.OperationStats],
    population: list[list[StoredSpan]],
    clock: FakeClock,
    window_s: int,
) -> None:
    got = {(o.service_name, o.operation): o for o in got_ops}
    oldest = clock.wall() - window_s
    everything = [s for spans in population for s in spans]
    recent = [s for s in everything if s.span.end_time_unix_nano / SEC >= oldest]
    keys = {(s.service_name, s.span.name) for s in recent}
    assert set(got) == keys
    for key in keys:
        group = [s for s in recent if (s.service_name, s.span.name) == key]
        ms = [(s.span.end_time_unix_nano - s.span.start_time_unix_nano) / 1e6 for s in group]
        errors = [s.span.status.code == 2 for s in group]
        ttft = [
            a.value.double_value * 1000
            for s in group
            for a in s.span.attributes
            if a.key == "gen_ai.server.time_to_first_token"
        ]
        satisfied = sum(1 for d, e in zip(ms, errors, strict=True) if not e and d <= APDEX_T_MS)
        tolerating = sum(
            1 for d, e in zip(ms, errors, strict=True) if not e and APDEX_T_MS < d <= 4 * APDEX_T_MS
        )
        op = got[key]
        assert op.count == len(group)
        assert op.request_rate == pytest.approx(len(group) / window_s)
        assert op.error_rate == pytest.approx(sum(errors) / len(group))
        assert op.p50_ms == pytest.approx(nearest_rank(ms, 0.5))
        assert op.p95_ms == pytest.approx(nearest_rank(ms, 0.95))
        assert op.p99_ms == pytest.approx(nearest_rank(ms, 0.99))
        assert op.ttft_p50_ms == pytest.approx(nearest_rank(ttft, 0.5))
        assert op.ttft_p95_ms == pytest.approx(nearest_rank(ttft, 0.95))
        assert op.apdex == pytest.approx((satisfied + tolerating / 2) / len(group))


@pytest.mark.parametrize("window_s", [10, 60])
def test_operation_stats_match_brute_force(window_s: int) -> None:
    clock = FakeClock()
    stats = WindowStats(clock=clock, max_window_s=60, apdex_t_ms=APDEX_T_MS, max_samples=100_000)
    traces = random_traces(clock, random.Random(window_s), 600)
    for spans in traces:
        stats.record(spans)

    ops = list(stats.operations(window_s).operations)
    assert_matches_brute_force(ops, traces, clock, window_s)
    assert all(op.spans == op.count for op in ops)


@pytest.mark.parametrize("window_s", [10, 60])
def test_sampled_spans_stand_for_the_traces_their_ratio_left_out(window_s: int) -> None:
    # Deterministic: a span kept with ratio 1/k counts as k calls, so the statistics of
    # the mixed-ratio sample equal those of the population with each trace repeated k
    # times (exact binary fractions: the weights add up exactly).
    clock = FakeClock()
    stats = WindowStats(clock=clock, max_window_s=60, apdex_t_ms=APDEX_T_MS, max_samples=100_000)
    traces = random_traces(
        clock, random.Random(100 + window_s), 600, ratios=(1.0, 0.5, 0.25, 0.125)
    )
    for spans in traces:
        stats.record(spans)

    ops = list(stats.operations(window_s).operations)
    assert_matches_brute_force(ops, expanded(traces), clock, window_s)
    assert sum(op.spans for op in ops) < sum(op.count for op in ops)

    # The graph and the breakdown weight the same way.
    population = [s for t in expanded(traces) for s in t]
    recent = [s for s in population if s.span.end_time_unix_nano / SEC >= clock.wall() - 60]
    limiter = [s for s in recent if s.service_name == "limiter"]
    edge = next(e for e in stats.graph().edges if e.server == "limiter")
    assert edge.calls == len(limiter)
    assert edge.errors == sum(s.span.status.code == 2 for s in limiter)
    slow = {(o.service_name, o.operation): o for o in stats.breakdown(limit=100).slowest}
    provider = [s for s in recent if s.service_name == "provider"]
    ms = [(s.span.end_time_unix_nano - s.span.start_time_unix_nano) / 1e6 for s in provider]
    assert slow[("provider", "Stream")].count == len(provider)
    assert slow[("provider", "Stream")].p99_ms == pytest.approx(nearest_rank(ms, 0.99))
    assert slow[("provider", "Stream")].mean_self_ms == pytest.approx(sum(ms) / len(ms))


def test_error_rate_is_estimated_without_bias_at_a_low_head_ratio() -> None:
    # 20 000 calls, 2% failing and slow. Head sampling keeps 10% of the traces; every
    # failure is exported anyway (keep_errors) and says ratio 1.0.
    clock = FakeClock()
    stats = WindowStats(clock=clock, max_window_s=60, apdex_t_ms=100, max_samples=100_000)
    rng = random.Random(11)
    now_ns = int(clock.wall() * SEC)
    population: list[tuple[float, bool]] = []
    for _ in range(20_000):
        error = rng.random() < 0.02
        duration_ms = rng.uniform(500, 900) if error else rng.uniform(10, 200)
        population.append((duration_ms, error))
        sampled = rng.random() < 0.1
        if not (sampled or error):
            continue
        end = now_ns - rng.randrange(0, 50 * SEC)
        ratio = 1.0 if error else 0.1
        stats.record(
            [
                stored(
                    "router",
                    trace_id=os.urandom(16),
                    name="Generate",
                    start_ns=end - int(duration_ms * 1e6),
                    end_ns=end,
                    error=error,
                    attributes={RATIO_ATTRIBUTE: ratio},
                )
            ]
        )
    [op] = stats.operations().operations
    true_rate = sum(e for _, e in population) / len(population)
    assert op.spans < 0.15 * len(population)  # what was really received
    assert op.count == pytest.approx(len(population), rel=0.05)
    assert op.error_rate == pytest.approx(true_rate, abs=0.004)
    # Unweighted, the same spans would claim ~17% errors.
    received_errors = sum(e for _, e in population)
    assert received_errors / op.spans > 5 * true_rate
    durations = sorted(d for d, _ in population)
    assert op.p50_ms == pytest.approx(nearest_rank(durations, 0.5), rel=0.05)
    assert op.p99_ms == pytest.approx(nearest_rank(durations, 0.99), rel=0.1)


def test_weighted_percentile_is_nearest_rank_with_unit_weights() -> None:
    rng = random.Random(3)
    values = sorted(rng.uniform(0, 100) for _ in range(257))
    pairs = [(v, 1.0) for v in values]
    for q in (0.01, 0.5, 0.95, 0.99, 1.0):
        assert weighted_percentile(pairs, q) == nearest_rank(values, q)
    assert weighted_percentile([], 0.5) == 0.0
    # Weight 3 on the first of two values: it is the median and the 75th percentile.
    assert weighted_percentile([(1.0, 3.0), (2.0, 1.0)], 0.75) == 1.0
    assert weighted_percentile([(1.0, 3.0), (2.0, 1.0)], 0.76) == 2.0


def test_window_slides_with_the_clock_and_old_samples_are_trimmed() -> None:
    clock = FakeClock()
    stats = WindowStats(clock=clock, max_window_s=60, apdex_t_ms=100, max_samples=1_000)
    now_ns = int(clock.wall() * SEC)
    stats.record([stored("a", trace_id=os.urandom(16), start_ns=now_ns - SEC, end_ns=now_ns)])
    assert [o.count for o in stats.operations().operations] == [1]

    clock.advance(59.9)
    assert [o.count for o in stats.operations().operations] == [1]
    clock.advance(0.2)
    assert list(stats.operations().operations) == []
    assert stats.window(0) == 60 and stats.window(3_600) == 60 and stats.window(5) == 5


def test_errors_are_frustrated_in_apdex_and_filtering_by_service() -> None:
    clock = FakeClock()
    stats = WindowStats(clock=clock, max_window_s=60, apdex_t_ms=100, max_samples=1_000)
    now_ns = int(clock.wall() * SEC)
    for error, service in ((True, "a"), (False, "a"), (False, "b")):
        stats.record(
            [
                stored(
                    service,
                    trace_id=os.urandom(16),
                    start_ns=now_ns - 1_000_000,
                    end_ns=now_ns,
                    error=error,
                )
            ]
        )
    [only_a] = stats.operations(service="a").operations
    assert (only_a.service_name, only_a.count, only_a.apdex, only_a.error_rate) == (
        "a",
        2,
        0.5,
        0.5,
    )


def test_service_graph_and_breakdown_match_brute_force() -> None:
    clock = FakeClock()
    stats = WindowStats(clock=clock, max_window_s=60, apdex_t_ms=100, max_samples=100_000)
    traces = random_traces(clock, random.Random(7), 300)
    for spans in traces:
        stats.record(spans)
    oldest = clock.wall() - 60
    recent = [s for t in traces for s in t if s.span.end_time_unix_nano / SEC >= oldest]

    edges = {(e.client, e.server): e for e in stats.graph().edges}

    assert set(edges) == {("router", "limiter"), ("router", "provider")}
    limiter = [s for s in recent if s.service_name == "limiter"]
    assert edges[("router", "limiter")].calls == len(limiter)
    limiter_errors = sum(s.span.status.code == 2 for s in limiter)
    assert edges[("router", "limiter")].errors == limiter_errors
    assert edges[("router", "limiter")].error_rate == pytest.approx(limiter_errors / len(limiter))
    assert edges[("router", "provider")].errors == 0

    breakdown = stats.breakdown(limit=2)
    # Children fill the router span exactly, so all self time is in the SERVER children.
    server = next(k for k in breakdown.kinds if k.kind == "SPAN_KIND_SERVER")
    children_ms = sum(
        (s.span.end_time_unix_nano - s.span.start_time_unix_nano) / 1e6
        for s in recent
        if s.service_name != "router"
    )
    assert server.self_time_ms == pytest.approx(children_ms)
    assert server.share == pytest.approx(1.0)
    assert len(breakdown.slowest) == 2
    assert breakdown.slowest[0].p99_ms >= breakdown.slowest[1].p99_ms
    assert breakdown.slowest[0].service_name in {"router", "provider"}


def test_prometheus_export_carries_the_same_figures() -> None:
    clock = FakeClock()
    stats = WindowStats(clock=clock, max_window_s=60, apdex_t_ms=100, max_samples=100_000)
    for spans in random_traces(clock, random.Random(3), 200):
        stats.record(spans)
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))

    text = generate_latest(registry).decode()

    op = next(o for o in stats.operations().operations if o.service_name == "router")
    labels = {"service": "router", "method": op.operation}
    assert sample_value(text, "sluice_slo_request_rate", labels) == pytest.approx(op.request_rate)
    assert sample_value(text, "sluice_slo_apdex", labels) == pytest.approx(op.apdex)
    assert sample_value(
        text, "sluice_slo_latency_seconds", {**labels, "quantile": "0.99"}
    ) == pytest.approx(op.p99_ms / 1000)
    edge = stats.graph().edges[0]
    assert sample_value(
        text, "sluice_service_graph_calls", {"client": edge.client, "server": edge.server}
    ) == float(edge.calls)
    assert service_label("sluice-router") == "router" and service_label("envoy") == "envoy"


@pytest.mark.parametrize(
    "ratio", [1e-300, 5e-324, 0.0, -1.0, math.inf, -math.inf, math.nan, 1e308, 2**63 - 1]
)
def test_no_ratio_or_ttft_a_span_carries_breaks_the_figures(ratio: float) -> None:
    # Issue 16 item 2: spans claiming `sluice.sampling.ratio` 1e-300 made GetStats and
    # /metrics fail (`ValueError: Value out of range` on the uint64 count). Any sender can
    # export spans, so every value is bounded here: one span stands for at most 1/floor.
    clock = FakeClock()
    stats = WindowStats(clock=clock, max_window_s=60, apdex_t_ms=APDEX_T_MS, max_samples=1_000)
    end_ns = int(clock.wall() * SEC)
    for index in range(10):
        parent = os.urandom(8)
        trace_id = os.urandom(16)
        stats.record(
            [
                stored(
                    "router",
                    trace_id=trace_id,
                    span_id=parent,
                    name="/Generate",
                    start_ns=end_ns - SEC // 10,
                    end_ns=end_ns,
                    error=index % 3 == 0,
                    attributes={RATIO_ATTRIBUTE: ratio, TTFT_ATTRIBUTE: ratio},
                ),
                stored(
                    "provider",
                    trace_id=trace_id,
                    parent=parent,
                    name="/Stream",
                    start_ns=end_ns - SEC // 20,
                    end_ns=end_ns,
                    attributes={RATIO_ATTRIBUTE: ratio},
                ),
            ]
        )
    ops = {o.operation: o for o in stats.operations().operations}
    assert set(ops) == {"/Generate", "/Stream"}
    for op in ops.values():
        assert 10 <= op.count <= 10 / MIN_SAMPLING_RATIO
        assert all(math.isfinite(v) for v in (op.request_rate, op.error_rate, op.apdex))
        assert all(math.isfinite(v) for v in (op.ttft_p50_ms, op.ttft_p95_ms))
    (edge,) = stats.graph().edges
    assert 10 <= edge.calls <= 10 / MIN_SAMPLING_RATIO
    assert stats.breakdown().slowest
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    text = generate_latest(registry).decode()
    labels = {"service": "router", "method": "/Generate"}
    assert sample_value(text, "sluice_slo_request_rate", labels) == pytest.approx(
        ops["/Generate"].request_rate
    )
