"""Every in-memory store of telemetry is bounded by (estimated) bytes, not only counts."""

from __future__ import annotations

import os

from sluice.telemetry.memory import (
    MEMORY_PER_WIRE_BYTE,
    SPAN_OVERHEAD_BYTES,
    span_bytes,
    spans_bytes,
)
from sluice.telemetry.sampling import StoredSpan, TailSampler
from sluice.telemetry.stats import WindowStats
from sluice.telemetry.store import SpanStore
from tests.support import FakeClock
from tests.unit.telemetry.spans import stored

KIB = 1024


def fat(trace_id: bytes, size: int = 1_000) -> StoredSpan:
    """A span whose serialized size is about `size` bytes (one long attribute)."""
    return stored("router", trace_id=trace_id, attributes={"payload": "x" * size})


def test_span_estimate_grows_with_the_serialized_size() -> None:
    small, big = fat(os.urandom(16), 10), fat(os.urandom(16), 5_000)
    assert span_bytes(small) == MEMORY_PER_WIRE_BYTE * small.span.ByteSize() + SPAN_OVERHEAD_BYTES
    assert span_bytes(big) - span_bytes(small) >= MEMORY_PER_WIRE_BYTE * 4_990


def test_store_evicts_the_oldest_traces_beyond_its_byte_bound() -> None:
    store = SpanStore(max_traces=100_000, max_spans_per_trace=100, max_bytes=200 * KIB)
    ids = [os.urandom(16) for _ in range(200)]
    for trace_id in ids:
        assert store.add(trace_id, [fat(trace_id), fat(trace_id)]) == 0
        assert store.bytes_used <= store.max_bytes
    # ~12 KiB a trace: about 16 fit, far fewer than the count bound.
    assert 10 <= len(store) <= 25
    assert store.evicted == 200 - len(store)
    assert store.get(ids[0]) == []
    assert len(store.get(ids[-1])) == 2
    held = [trace_id for trace_id in ids if store.get(trace_id)]
    assert held == ids[-len(store) :]  # exactly the newest
    assert store.bytes_used == sum(spans_bytes(store.get(t)) for t in held)


def test_store_keeps_the_count_bound_too() -> None:
    store = SpanStore(max_traces=3, max_spans_per_trace=10, max_bytes=64 * 1024 * KIB)
    for _ in range(5):
        trace_id = os.urandom(16)
        store.add(trace_id, [fat(trace_id, 10)])
    assert len(store) == 3
    assert store.evicted == 2


def test_one_trace_bigger_than_the_bound_keeps_only_what_fits() -> None:
    store = SpanStore(max_traces=10, max_spans_per_trace=1_000, max_bytes=50 * KIB)
    trace_id = os.urandom(16)
    rejected = store.add(trace_id, [fat(trace_id) for _ in range(40)])
    kept = len(store.get(trace_id))
    assert kept + rejected == 40
    assert 5 <= kept < 40
    assert store.bytes_used <= store.max_bytes
    # Later traces push it out as usual.
    other = os.urandom(16)
    store.add(other, [fat(other)])
    assert store.bytes_used <= store.max_bytes


def test_stats_samples_are_bounded_by_bytes_and_freed_by_the_window() -> None:
    clock = FakeClock()
    stats = WindowStats(
        clock=clock, max_window_s=60, apdex_t_ms=100, max_samples=1_000_000, max_bytes=100 * KIB
    )
    end_ns = int(clock.wall() * 1e9)
    for _ in range(2_000):
        trace_id = os.urandom(16)
        span = stored(
            "router",
            trace_id=trace_id,
            name="sluice.router.v1/Generate",
            start_ns=end_ns - 1_000_000,
            end_ns=end_ns,
        )
        stats.record([span])
        assert stats.bytes_used <= stats.max_bytes
    assert 0 < len(stats) < 2_000  # the oldest went to keep within the bytes
    clock.advance(120)
    stats.record([])
    assert len(stats) == 0
    assert stats.bytes_used == 0


def test_pending_traces_are_decided_early_beyond_their_byte_bound() -> None:
    clock = FakeClock()
    tail = TailSampler(
        clock=clock,
        decision_wait_s=30.0,
        keep_ratio=1.0,
        slow_threshold_ms=10_000,
        max_pending_traces=100_000,
        max_spans_per_trace=100,
        max_pending_bytes=100 * KIB,
    )
    for _ in range(500):
        trace_id = os.urandom(16)
        tail.add(fat(trace_id))
        assert tail.pending_bytes <= tail.max_pending_bytes
    early = tail.due()  # nothing is quiet yet: these were forced by the byte bound
    assert len(early) + len(tail) == 500
    assert len(early) > 400
    tail.due(flush=True)
    assert tail.pending_bytes == 0
