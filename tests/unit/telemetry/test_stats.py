"""Window statistics against a brute-force computation over the same spans."""

from __future__ import annotations

import math
import os
import random

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from sluice.telemetry.sampling import StoredSpan
from sluice.telemetry.stats import StatsCollector, WindowStats, service_label
from tests.support import FakeClock, sample_value
from tests.unit.telemetry.spans import stored

SEC = 1_000_000_000
APDEX_T_MS = 40.0


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def random_traces(clock: FakeClock, rng: random.Random, n: int) -> list[list[StoredSpan]]:
    """Router -> (limiter, provider) traces ending over the last two minutes."""
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
        traces.append(spans)
    return traces


@pytest.mark.parametrize("window_s", [10, 60])
def test_operation_stats_match_brute_force(window_s: int) -> None:
    clock = FakeClock()
    stats = WindowStats(clock=clock, max_window_s=60, apdex_t_ms=APDEX_T_MS, max_samples=100_000)
    traces = random_traces(clock, random.Random(window_s), 600)
    for spans in traces:
        stats.record(spans)

    got = {(o.service_name, o.operation): o for o in stats.operations(window_s).operations}

    oldest = clock.wall() - window_s
    everything = [s for spans in traces for s in spans]
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
