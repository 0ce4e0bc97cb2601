"""Circuit breaker, backoff, retry budget and bulkhead: pure logic on a fake clock."""

from __future__ import annotations

import asyncio
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.resilience.breaker import BreakerSettings, BreakerState, CircuitBreaker
from sluice.core.resilience.bulkhead import Bulkhead, BulkheadFullError, BulkheadSettings
from sluice.core.resilience.retry import Backoff, RetryBudget, RetrySettings
from tests.support import FakeClock

# -- circuit breaker ------------------------------------------------------------------


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state, read through a call so the type checker does not narrow it."""
    return breaker.state


def test_breaker_defaults_are_the_specs() -> None:
    defaults = BreakerSettings()
    assert (
        defaults.failure_threshold,
        defaults.timeout,
        defaults.reset_timeout,
        defaults.half_open_requests,
    ) == (5, 30_000, 60_000, 3)


def test_breaker_opens_after_threshold_probes_after_reset_and_closes_on_success() -> None:
    clock = FakeClock()
    transitions: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(BreakerSettings(), clock, lambda a, b: transitions.append((a, b)))
    for _ in range(4):
        assert breaker.allow()
        breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(59.999)
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(0.001)
    clock.advance(0.001)
    # Exactly three probes, no fourth until they report.
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.record_success()
    breaker.record_success()
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert transitions == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_a_failed_probe_reopens_for_a_full_reset_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=1, reset_timeout=1000), clock)
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(0.5)
    assert not breaker.allow()
    clock.advance(0.5)
    assert breaker.allow()


def test_a_success_resets_the_consecutive_failure_count() -> None:
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=3), FakeClock())
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED


class ReferenceBreaker:
    """The breaker's rules written as plainly as possible."""

    def __init__(self, threshold: int, reset_s: float, probes: int) -> None:
        self.threshold, self.reset_s, self.probes = threshold, reset_s, probes
        self.state, self.failures, self.opened, self.sent, self.ok = "closed", 0, 0.0, 0, 0

    def allow(self, now: float) -> bool:
        if self.state == "open" and now - self.opened >= self.reset_s:
            self.state, self.sent, self.ok = "half", 0, 0
        if self.state == "closed":
            return True
        if self.state == "half" and self.sent < self.probes:
            self.sent += 1
            return True
        return False

    def result(self, ok: bool, now: float) -> None:
        if self.state == "closed":
            self.failures = 0 if ok else self.failures + 1
            if self.failures >= self.threshold:
                self.state, self.opened = "open", now
        elif self.state == "half":
            if not ok:
                self.state, self.opened = "open", now
            else:
                self.ok += 1
                if self.ok >= self.probes:
                    self.state, self.failures = "closed", 0


@settings(max_examples=200, deadline=None)
@given(
    threshold=st.integers(1, 6),
    probes=st.integers(1, 4),
    steps=st.lists(
        st.tuples(st.floats(0, 3, allow_nan=False), st.booleans()), min_size=1, max_size=80
    ),
)
def test_breaker_matches_the_reference_model(
    threshold: int, probes: int, steps: list[tuple[float, bool]]
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerSettings(failure_threshold=threshold, reset_timeout=2000, half_open_requests=probes),
        clock,
    )
    reference = ReferenceBreaker(threshold, 2.0, probes)
    origin = clock.monotonic()
    for gap, ok in steps:
        clock.advance(gap)
        now = clock.monotonic() - origin
        allowed = breaker.allow()
        assert allowed == reference.allow(now)
        if allowed:
            (breaker.record_success if ok else breaker.record_failure)()
            reference.result(ok, now)
        expected = {"closed": "CLOSED", "open": "OPEN", "half": "HALF_OPEN"}[reference.state]
        assert breaker._state.name == expected


# -- backoff and budget -----------------------------------------------------------------


@given(retry=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_full_jitter_stays_within_the_exponential_cap(retry: int, seed: int) -> None:
    retry_settings = RetrySettings(initial_backoff_ms=50, max_backoff_ms=2000, multiplier=2)
    backoff = Backoff(retry_settings, random.Random(seed))
    cap = min(2.0, 0.05 * 2 ** (retry - 1))
    assert backoff.cap_s(retry) == pytest.approx(cap)
    assert 0.0 <= backoff.delay_s(retry) <= cap


def test_jitter_spreads_delays_and_retry_after_is_a_floor() -> None:
    backoff = Backoff(RetrySettings(initial_backoff_ms=1000), random.Random(7))
    delays = [backoff.delay_s(1) for _ in range(200)]
    assert min(delays) < 0.2
    assert max(delays) > 0.8
    assert all(backoff.delay_s(1, retry_after_s=1.5) >= 1.5 for _ in range(50))


def test_retry_budget_caps_retries_at_a_share_of_requests() -> None:
    clock = FakeClock()
    budget = RetryBudget(
        RetrySettings(budget_ratio=0.2, budget_window_s=10, budget_min_retries=0), clock
    )
    for _ in range(100):
        budget.record_request()
    granted = sum(budget.try_spend() for _ in range(100))
    assert granted == 20
    # The window slides: old requests and retries stop counting.
    clock.advance(10.0)
    assert not budget.try_spend()
    assert budget.retries_in_window == 0
    for _ in range(10):
        budget.record_request()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]


def test_retry_budget_floor_lets_a_quiet_gateway_retry() -> None:
    budget = RetryBudget(RetrySettings(budget_ratio=0.2, budget_min_retries=2), FakeClock())
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]


# -- bulkhead ---------------------------------------------------------------------------


async def test_bulkhead_bounds_concurrency_and_the_queue() -> None:
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=2, max_waiting=1, max_wait_ms=5_000))
    release = asyncio.Event()
    inside: list[int] = []

    async def hold() -> None:
        async with bulkhead.slot():
            inside.append(bulkhead.in_use)
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    assert bulkhead.in_use == 2
    queued = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert bulkhead.waiting == 1
    # Queue full: the fourth caller is turned away at once.
    with pytest.raises(BulkheadFullError):
        async with bulkhead.slot():
            pass
    release.set()
    await asyncio.gather(*holders, queued)
    assert bulkhead.in_use == 0
    assert bulkhead.waiting == 0
    assert max(inside) == 2


async def test_bulkhead_wait_is_bounded() -> None:
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=1, max_waiting=4, max_wait_ms=20))
    async with bulkhead.slot():
        with pytest.raises(BulkheadFullError):
            async with bulkhead.slot():
                pass
        assert bulkhead.waiting == 0
    async with bulkhead.slot():
        assert bulkhead.in_use == 1


async def test_bulkhead_without_wait_refuses_when_full() -> None:
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=1, max_wait_ms=0))
    async with bulkhead.slot():
        with pytest.raises(BulkheadFullError):
            async with bulkhead.slot():
                pass


def test_an_abandoned_probe_frees_its_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=1, reset_timeout=1000), clock)
    breaker.record_failure()
    clock.advance(1.0)
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]
    breaker.record_abandoned()  # one probe's client went away
    assert breaker.allow()
    for _ in range(3):
        breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record_abandoned()  # closed: nothing to free
    assert state_of(breaker) is BreakerState.CLOSED


def test_retry_budget_memory_stays_bounded_on_the_healthy_path() -> None:
    # Issue 16 item 5: a request per millisecond for 1e5 requests and no retry at all
    # (the healthy path); the window must not keep a timestamp per request.
    clock = FakeClock()
    budget = RetryBudget(RetrySettings(budget_window_s=10, budget_min_retries=0), clock)
    for _ in range(100_000):
        budget.record_request()
        clock.advance(0.001)
    sizes = [sys.getsizeof(part) for part in vars(budget).values()]
    assert sum(sizes) < 4_096
    assert budget.slices <= RetryBudget.BUCKETS
    # Only the last window's requests count: 10 s at 1,000/s, 20% of them retries.
    granted = sum(budget.try_spend() for _ in range(3_000))
    assert 1_900 <= granted <= 2_000
