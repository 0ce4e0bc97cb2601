"""Tail sampling: one decision per whole trace, taken when the trace is quiet."""

from __future__ import annotations

import os

import pytest

from sluice.telemetry.sampling import Decision, ratio_keeps
from tests.support import FakeClock
from tests.unit.telemetry.spans import sampler, stored

MS = 1_000_000


def test_decides_only_after_the_trace_is_quiet_for_the_wait() -> None:
    clock = FakeClock()
    tail = sampler(clock)
    trace_id = os.urandom(16)
    tail.add(stored("a", trace_id=trace_id))
    clock.advance(1.5)
    tail.add(stored("b", trace_id=trace_id, error=True))  # activity restarts the wait
    clock.advance(1.9)
    assert tail.due() == []
    assert len(tail.pending(trace_id)) == 2

    clock.advance(0.2)
    [decided] = tail.due()

    assert decided.decision is Decision.KEPT_ERROR
    assert {s.service_name for s in decided.spans} == {"a", "b"}
    assert tail.pending(trace_id) == []
    assert len(tail) == 0


def test_an_error_anywhere_keeps_the_whole_trace_at_ratio_zero() -> None:
    clock = FakeClock()
    tail = sampler(clock)
    ok_id, error_id = os.urandom(16), os.urandom(16)
    for trace_id in (ok_id, error_id):
        tail.add(stored("router", trace_id=trace_id))
        tail.add(stored("provider", trace_id=trace_id, error=trace_id == error_id))
    clock.advance(2.0)

    decisions = {d.trace_id: d.decision for d in tail.due()}

    assert decisions == {ok_id: Decision.DROPPED, error_id: Decision.KEPT_ERROR}


def test_a_slow_trace_is_kept_by_its_whole_span_range() -> None:
    clock = FakeClock()
    tail = sampler(clock, slow_threshold_ms=100)
    slow_id, fast_id = os.urandom(16), os.urandom(16)
    # Neither span is slow alone; together they cover 100 ms.
    tail.add(stored("a", trace_id=slow_id, start_ns=0, end_ns=60 * MS))
    tail.add(stored("b", trace_id=slow_id, start_ns=50 * MS, end_ns=100 * MS))
    tail.add(stored("a", trace_id=fast_id, start_ns=0, end_ns=99 * MS))
    clock.advance(2.0)

    decisions = {d.trace_id: d.decision for d in tail.due()}

    assert decisions == {slow_id: Decision.KEPT_SLOW, fast_id: Decision.DROPPED}


def test_ratio_follows_the_trace_id_like_opentelemetry() -> None:
    low = bytes(8) + (5).to_bytes(8, "big")
    high = bytes(8) + (2**64 - 1).to_bytes(8, "big")
    assert ratio_keeps(low, 0.5) and not ratio_keeps(high, 0.5)
    assert not ratio_keeps(low, 0.0) and ratio_keeps(high, 1.0)
    ids = [os.urandom(16) for _ in range(4_000)]
    share = sum(ratio_keeps(t, 0.25) for t in ids) / len(ids)
    assert 0.2 < share < 0.3


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_ok_traces_are_kept_at_the_configured_share(ratio: float) -> None:
    clock = FakeClock()
    tail = sampler(clock, keep_ratio=ratio)
    ids = [os.urandom(16) for _ in range(2_000)]
    for trace_id in ids:
        tail.add(stored("a", trace_id=trace_id))
    clock.advance(2.0)

    decided = tail.due()

    assert len(decided) == len(ids)
    kept = [d for d in decided if d.decision is Decision.KEPT_SAMPLED]
    assert {d.trace_id for d in kept} == {t for t in ids if ratio_keeps(t, ratio)}
    assert abs(len(kept) / len(ids) - ratio) < 0.05


def test_late_spans_follow_the_decision_taken() -> None:
    clock = FakeClock()
    tail = sampler(clock)
    kept_id, dropped_id = os.urandom(16), os.urandom(16)
    tail.add(stored("a", trace_id=kept_id, error=True))
    tail.add(stored("a", trace_id=dropped_id))
    clock.advance(2.0)
    assert len(tail.due()) == 2

    tail.add(stored("late", trace_id=kept_id))
    tail.add(stored("late", trace_id=dropped_id))
    [late] = tail.due()

    assert (late.trace_id, late.decision, late.late) == (kept_id, Decision.KEPT_ERROR, True)
    assert [s.service_name for s in late.spans] == ["late"]
    assert len(tail) == 0


def test_pending_traces_are_bounded_by_deciding_the_oldest_early() -> None:
    clock = FakeClock()
    tail = sampler(clock, max_pending_traces=2)
    first, second, third = (os.urandom(16) for _ in range(3))
    tail.add(stored("a", trace_id=first, error=True))
    tail.add(stored("a", trace_id=second))
    tail.add(stored("a", trace_id=third))

    assert len(tail) == 2
    [forced] = tail.due()  # no time passed: only the forced one
    assert (forced.trace_id, forced.decision) == (first, Decision.KEPT_ERROR)


def test_spans_over_the_per_trace_limit_are_rejected() -> None:
    clock = FakeClock()
    tail = sampler(clock, max_spans_per_trace=2)
    trace_id = os.urandom(16)
    results = [tail.add(stored("a", trace_id=trace_id, name=f"s{i}")) for i in range(3)]
    assert results == [True, True, False]
    assert [s.span.name for s in tail.pending(trace_id)] == ["s0", "s1"]


def test_flush_decides_everything_at_once() -> None:
    clock = FakeClock()
    tail = sampler(clock)
    tail.add(stored("a", trace_id=os.urandom(16)))
    assert tail.due() == []
    assert len(tail.due(flush=True)) == 1
