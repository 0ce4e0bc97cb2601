"""Every in-memory store of telemetry is bounded by (estimated) bytes, not only counts."""

from __future__ import annotations

import ctypes
import os
import random
import tracemalloc

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client import CollectorRegistry

from sluice.telemetry.forward import ForwardMetrics, build_forwarders
from sluice.telemetry.memory import (
    DECISION_BYTES,
    MEMORY_PER_WIRE_BYTE,
    SPAN_OVERHEAD_BYTES,
    span_bytes,
    spans_bytes,
)
from sluice.telemetry.sampling import StoredSpan, TailSampler
from sluice.telemetry.settings import ForwardSettings
from sluice.telemetry.stats import WindowStats
from sluice.telemetry.store import SpanStore, service_name
from tests.support import FakeClock
from tests.unit.telemetry.spans import sampler, stored

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
    tail = sampler(
        clock,
        decision_wait_s=30.0,
        keep_ratio=1.0,
        slow_threshold_ms=10_000,
        max_pending_traces=100_000,
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


class _MallInfo2(ctypes.Structure):
    # The layout of glibc's struct mallinfo2.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def malloc_in_use() -> int:
    """Bytes glibc's malloc has handed out (upb allocates message memory there, where
    tracemalloc does not look)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def export(rng: random.Random, traces: int, spans_per_trace: int) -> bytes:
    """One serialized export of the router: many traces' spans in one request."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    name = resource_spans.resource.attributes.add(key="service.name")
    name.value.string_value = "sluice-router"
    scope_spans = resource_spans.scope_spans.add()
    for _ in range(traces):
        trace_id = rng.randbytes(16)
        for _ in range(spans_per_trace):
            span = scope_spans.spans.add(
                trace_id=trace_id, span_id=rng.randbytes(8), name="op", kind=2
            )
            for key in range(8):
                span.attributes.add(key=f"attribute.{key}").value.string_value = "v" * 20
    return request.SerializeToString()


def prompt_sampler(clock: FakeClock, **bounds: float) -> TailSampler:
    """A sampler that decides each trace 1 s after its last span, never for slowness (so
    a 2 s step of the clock decides everything added before it)."""
    return sampler(clock, decision_wait_s=1.0, slow_threshold_ms=1e9, **bounds)


def test_kept_spans_do_not_hold_their_export_requests_memory() -> None:
    """A stored span parsed from an export shared the request's memory: at a keep ratio
    of 0.02 a store bounded at 1 MiB held 22 MiB, the dropped traces' spans included."""
    clock = FakeClock()
    tail = prompt_sampler(clock, keep_ratio=0.02, max_pending_traces=100_000)
    store = SpanStore(max_traces=100_000, max_spans_per_trace=100, max_bytes=1024 * KIB)
    rng = random.Random(7)
    exports = [export(rng, traces=64, spans_per_trace=8) for _ in range(100)]
    before = malloc_in_use()
    for raw in exports:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(raw)  # as gRPC does
        for resource_spans in request.resource_spans:
            service = service_name(resource_spans)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    tail.add(StoredSpan(service, span, resource_spans.resource, scope_spans.scope))
        del request, resource_spans, scope_spans, span
        clock.advance(2.0)
        for decided in tail.due():
            if decided.decision.kept:
                store.add(decided.trace_id, decided.spans)
    assert store.evicted > 0  # the store reached its bound
    assert store.bytes_used <= store.max_bytes
    held = malloc_in_use() - before
    # ~1.5 MiB: the kept spans (below their estimate, telemetry/memory.py), the maps of
    # traces and decisions.
    assert held < 3 * store.max_bytes, f"{held / 2**20:.1f} MiB held for a 1 MiB store"


def test_remembered_decisions_take_at_most_their_byte_bound() -> None:
    """The decisions kept for late spans: a count bound of fixed-size entries, reported
    in bytes (telemetry/memory.py); the entry size covers what Python really holds."""
    clock = FakeClock()
    tail = prompt_sampler(clock, max_pending_traces=10_000, max_spans_per_trace=10)
    spans = [stored("router", trace_id=os.urandom(16)) for _ in range(30_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, len(spans), 5_000):
            for item in spans[start : start + 5_000]:
                tail.add(item)
            clock.advance(2.0)
            tail.due()
            assert tail.decided_bytes <= tail.max_decided_bytes
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(tail) == 0
    assert tail.decided_bytes == tail.max_decided_bytes == 10_000 * DECISION_BYTES
    assert held <= tail.decided_bytes, f"{held} bytes held for 10,000 decisions"


async def test_a_forward_buffer_drops_its_oldest_spans_beyond_its_byte_bound() -> None:
    """An endpoint that is down: 20,000 spans fit the count bound, not the bytes."""
    registry = CollectorRegistry()
    target = ForwardSettings(endpoint="127.0.0.1:1", max_buffer_bytes=1024 * KIB)
    (sender,) = build_forwarders([target], ForwardMetrics(registry))  # never started
    for _ in range(200):
        trace_id = os.urandom(16)
        sender.offer([fat(trace_id, 2_000) for _ in range(5)])
        assert sender.bytes_used <= sender.max_bytes
    dropped = registry.get_sample_value(
        "sluice_telemetry_forwarded_spans_total", {"endpoint": target.name, "result": "dropped"}
    )
    buffered = registry.get_sample_value(
        "sluice_telemetry_forward_buffer_spans", {"endpoint": target.name}
    )
    assert dropped is not None and buffered is not None
    assert 50 <= buffered <= 100  # ~12 KiB a span
    assert dropped + buffered == 1_000
    await sender.close(0.01)
