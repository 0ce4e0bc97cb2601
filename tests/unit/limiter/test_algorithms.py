"""The four algorithms against exact reference models, under a driven clock.

Times are multiples of 1/64 s and windows powers of two, so float time arithmetic is
exact and any disagreement is the algorithm's, not rounding's. Each property checks:
the decision equals the reference model's (never refuses what it should admit), the
admitted history keeps the algorithm's promise (never admits more than allowed in any
window it promises), and retry_after is exact (waiting it admits, waiting less does not).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.limiter.algorithms import (
    Algorithm,
    FixedWindow,
    SlidingCounter,
    SlidingLog,
    State,
    TokenBucket,
    make_algorithm,
)

TICK = Fraction(1, 64)
EPS = 1e-6


class Reference(Protocol):
    def margin(self, now: Fraction, cost: Fraction) -> Fraction:
        """Room left after admitting `cost` at `now` (>= 0 means admit)."""
        ...

    def admit(self, now: Fraction, cost: Fraction) -> None: ...


class ReferenceBucket:
    def __init__(self, capacity: Fraction, rate: Fraction) -> None:
        self.capacity, self.rate = capacity, rate
        self.tokens, self.updated = capacity, Fraction(0)

    def _refill(self, now: Fraction) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def margin(self, now: Fraction, cost: Fraction) -> Fraction:
        self._refill(now)
        return self.tokens - cost

    def admit(self, now: Fraction, cost: Fraction) -> None:
        self._refill(now)
        self.tokens -= cost


class ReferenceFixed:
    def __init__(self, limit: Fraction, window: Fraction) -> None:
        self.limit, self.window = limit, window
        self.used: dict[int, Fraction] = {}

    def margin(self, now: Fraction, cost: Fraction) -> Fraction:
        return self.limit - self.used.get(math.floor(now / self.window), Fraction(0)) - cost

    def admit(self, now: Fraction, cost: Fraction) -> None:
        index = math.floor(now / self.window)
        self.used[index] = self.used.get(index, Fraction(0)) + cost


class ReferenceLog:
    def __init__(self, limit: Fraction, window: Fraction) -> None:
        self.limit, self.window = limit, window
        self.log: list[tuple[Fraction, Fraction]] = []

    def margin(self, now: Fraction, cost: Fraction) -> Fraction:
        inside = sum((c for t, c in self.log if t > now - self.window), Fraction(0))
        return self.limit - inside - cost

    def admit(self, now: Fraction, cost: Fraction) -> None:
        self.log.append((now, cost))


class ReferenceCounter:
    def __init__(self, limit: Fraction, window: Fraction) -> None:
        self.limit, self.window = limit, window
        self.used: dict[int, Fraction] = {}

    def margin(self, now: Fraction, cost: Fraction) -> Fraction:
        index = math.floor(now / self.window)
        elapsed = now - index * self.window
        weight = 1 - elapsed / self.window
        estimate = self.used.get(index - 1, Fraction(0)) * weight + self.used.get(index, 0)
        return self.limit - estimate - cost

    def admit(self, now: Fraction, cost: Fraction) -> None:
        index = math.floor(now / self.window)
        self.used[index] = self.used.get(index, Fraction(0)) + cost


def run(
    algorithm: Algorithm,
    reference: Reference,
    steps: list[tuple[int, int]],
    promise: Callable[[list[tuple[Fraction, Fraction]]], None],
) -> None:
    state: State | None = None
    now = Fraction(0)
    admitted: list[tuple[Fraction, Fraction]] = []
    for ticks, raw_cost in steps:
        now += ticks * TICK
        cost = Fraction(raw_cost)
        margin = reference.margin(now, cost)
        verdict, new_state = algorithm.decide(state, float(now), float(cost))

        if abs(margin) > Fraction(1, 10**9):
            assert verdict.allowed == (margin >= 0), (float(now), raw_cost, float(margin))
        if cost > algorithm.limit:
            assert not verdict.allowed and math.isinf(verdict.retry_after_s)
        assert 0 <= verdict.remaining <= algorithm.limit
        assert verdict.reset_after_s >= 0
        if verdict.allowed:
            assert verdict.retry_after_s == 0
            reference.admit(now, cost)
            admitted.append((now, cost))
            state = new_state
        elif not math.isinf(verdict.retry_after_s):
            wait = verdict.retry_after_s
            assert wait > 0
            later, _ = algorithm.decide(state, float(now) + wait + EPS, float(cost))
            assert later.allowed, ("waiting retry_after must admit", wait)
            if wait > 2 * EPS:
                sooner, _ = algorithm.decide(state, float(now) + wait - EPS, float(cost))
                assert not sooner.allowed, ("retry_after must not be longer than needed", wait)
    promise(admitted)


def within_windows(
    admitted: list[tuple[Fraction, Fraction]], window: Fraction, bound: Fraction
) -> None:
    """Every window (t - window, t] ending at an admission holds at most `bound`."""
    for end, _ in admitted:
        inside = sum((c for t, c in admitted if end - window < t <= end), Fraction(0))
        assert inside <= bound, (float(end), float(inside), float(bound))


def within_aligned_windows(
    admitted: list[tuple[Fraction, Fraction]], window: Fraction, bound: Fraction
) -> None:
    """Every aligned window [k*window, (k+1)*window) holds at most `bound`."""
    per: dict[int, Fraction] = {}
    for t, c in admitted:
        index = math.floor(t / window)
        per[index] = per.get(index, Fraction(0)) + c
    assert all(used <= bound for used in per.values()), per


steps = st.lists(
    st.tuples(st.integers(min_value=0, max_value=200), st.integers(min_value=1, max_value=12)),
    min_size=1,
    max_size=60,
)
limits = st.integers(min_value=1, max_value=10)
windows = st.sampled_from([Fraction(1, 8), Fraction(1, 4), Fraction(1, 2), 1, 2, 4])


@settings(max_examples=300, deadline=None)
@given(capacity=limits, rate=st.sampled_from([0.25, 0.5, 1.0, 2.0, 8.0, 64.0]), steps=steps)
def test_token_bucket_matches_reference_and_bounds_every_interval(
    capacity: int, rate: float, steps: list[tuple[int, int]]
) -> None:
    exact_rate = Fraction(rate)

    def promise(admitted: list[tuple[Fraction, Fraction]]) -> None:
        # Over any interval [a, b]: at most a full bucket plus what refilled meanwhile.
        for i, (start, _) in enumerate(admitted):
            total = Fraction(0)
            for end, cost in admitted[i:]:
                total += cost
                assert total <= capacity + exact_rate * (end - start)

    run(
        TokenBucket(float(capacity), rate),
        ReferenceBucket(Fraction(capacity), exact_rate),
        steps,
        promise,
    )


@settings(max_examples=300, deadline=None)
@given(limit=limits, window=windows, steps=steps)
def test_fixed_window_matches_reference_and_bounds_each_window(
    limit: int, window: Fraction, steps: list[tuple[int, int]]
) -> None:
    run(
        FixedWindow(float(limit), float(window)),
        ReferenceFixed(Fraction(limit), Fraction(window)),
        steps,
        lambda admitted: within_aligned_windows(admitted, Fraction(window), Fraction(limit)),
    )


@settings(max_examples=300, deadline=None)
@given(limit=limits, window=windows, steps=steps)
def test_sliding_log_matches_reference_and_bounds_every_window(
    limit: int, window: Fraction, steps: list[tuple[int, int]]
) -> None:
    run(
        SlidingLog(float(limit), float(window)),
        ReferenceLog(Fraction(limit), Fraction(window)),
        steps,
        lambda admitted: within_windows(admitted, Fraction(window), Fraction(limit)),
    )


@settings(max_examples=300, deadline=None)
@given(limit=limits, window=windows, steps=steps)
def test_sliding_counter_matches_reference_and_keeps_its_weaker_promise(
    limit: int, window: Fraction, steps: list[tuple[int, int]]
) -> None:
    def promise(admitted: list[tuple[Fraction, Fraction]]) -> None:
        within_aligned_windows(admitted, Fraction(window), Fraction(limit))
        within_windows(admitted, Fraction(window), 2 * Fraction(limit))

    run(
        SlidingCounter(float(limit), float(window)),
        ReferenceCounter(Fraction(limit), Fraction(window)),
        steps,
        promise,
    )


def test_sliding_counter_can_exceed_the_limit_in_a_sliding_window_but_log_cannot() -> None:
    # The documented trade-off: a burst at the end of one window, then another just
    # after the boundary. The counter weights the first burst as if spread evenly.
    counter, log = SlidingCounter(10, 1.0), SlidingLog(10, 1.0)
    c_state: State | None = None
    l_state: State | None = None
    admitted = {"counter": 0, "log": 0}
    for now in [0.96875] * 10 + [1.5] * 10:
        verdict, new = counter.decide(c_state, now, 1)
        if verdict.allowed:
            c_state, admitted["counter"] = new, admitted["counter"] + 1
        verdict, new = log.decide(l_state, now, 1)
        if verdict.allowed:
            l_state, admitted["log"] = new, admitted["log"] + 1

    # Within (0.5, 1.5]: the log stays at 10; the counter let 5 more through.
    assert admitted == {"counter": 15, "log": 10}


# -- adjustments (reconciliation) ------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm",
    [TokenBucket(10, 1), FixedWindow(10, 4), SlidingLog(10, 4), SlidingCounter(10, 4)],
    ids=lambda a: a.name,
)
def test_refund_gives_room_back_and_charge_takes_it(algorithm: Algorithm) -> None:
    verdict, state = algorithm.decide(None, 0.0, 8)
    assert verdict.allowed
    assert not algorithm.decide(state, 0.0, 5)[0].allowed

    refunded = algorithm.adjust(state, 0.0, -6, 0.0)  # used 2, not 8

    assert algorithm.decide(refunded, 0.0, 8)[0].allowed
    assert not algorithm.decide(refunded, 0.0, 9)[0].allowed
    charged = algorithm.adjust(state, 0.0, 2, 0.0)  # used 10, not 8
    assert not algorithm.decide(charged, 0.0, 1)[0].allowed


def test_token_bucket_debt_is_repaid_before_admitting_again() -> None:
    bucket = TokenBucket(10, 1)
    _, state = bucket.decide(None, 0.0, 10)
    state = bucket.adjust(state, 0.0, 5, 0.0)  # used 15: 5 tokens of debt

    refused, _ = bucket.decide(state, 0.0, 1)

    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after_s == pytest.approx(6.0)
    assert bucket.decide(state, 6.0, 1)[0].allowed


@pytest.mark.parametrize(
    "algorithm", [FixedWindow(10, 1), SlidingLog(10, 1), SlidingCounter(10, 1)], ids=str
)
def test_a_refund_for_a_window_that_has_passed_changes_nothing(algorithm: Algorithm) -> None:
    _, state = algorithm.decide(None, 0.0, 10)
    later = 2.5  # two windows on: the reservation no longer counts anywhere
    before = algorithm.decide(state, later, 10)[0]

    refunded = algorithm.adjust(state, later, -10, 0.0)

    assert algorithm.decide(refunded, later, 10)[0] == before
    assert not algorithm.decide(refunded, later, 11)[0].allowed


def test_sliding_counter_refund_lands_in_the_previous_window() -> None:
    counter = SlidingCounter(10, 1.0)
    _, state = counter.decide(None, 0.5, 10)
    assert not counter.decide(state, 1.25, 4)[0].allowed  # 10 * 0.75 + 4 > 10

    refunded = counter.adjust(state, 1.25, -8, 0.5)  # 2 really used in window 0

    assert counter.decide(refunded, 1.25, 8)[0].allowed  # 2 * 0.75 + 8 <= 10


# -- details ---------------------------------------------------------------------------


def test_a_clock_stepping_back_does_not_mint_tokens() -> None:
    bucket = TokenBucket(2, 1)
    _, state = bucket.decide(None, 100.0, 2)

    _, state = bucket.decide(state, 0.0, 0)  # a step back of 100 s
    assert not bucket.decide(state, 0.5, 1)[0].allowed
    assert bucket.decide(state, 101.0, 1)[0].allowed


def test_token_bucket_reports_remaining_reset_and_retry() -> None:
    bucket = TokenBucket(10, 4)

    verdict, state = bucket.decide(None, 0.0, 6)

    assert (verdict.remaining, verdict.limit, verdict.reset_after_s) == (4, 10, 1.5)
    refused, _ = bucket.decide(state, 0.0, 7)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.75)


def test_cost_above_the_limit_is_refused_forever_without_consuming() -> None:
    for algorithm in (TokenBucket(4, 2), FixedWindow(4, 1), SlidingLog(4, 1), SlidingCounter(4, 1)):
        verdict, _ = algorithm.decide(None, 0.0, 5)
        assert not verdict.allowed
        assert math.isinf(verdict.retry_after_s)
        assert algorithm.decide(None, 0.0, 4)[0].allowed


def test_scaled_and_make_algorithm() -> None:
    assert TokenBucket(9, 3).scaled(1 / 3) == TokenBucket(3, 1)
    assert FixedWindow(9, 2).scaled(1 / 3) == FixedWindow(3, 2)
    assert make_algorithm("sliding_log", 5, 2) == SlidingLog(5, 2)
    assert make_algorithm("sliding_counter", 5, 2) == SlidingCounter(5, 2)
    assert make_algorithm("fixed_window", 5, 2).ttl_s() == 3
    assert SlidingCounter(5, 2).ttl_s() == 5
    assert TokenBucket(10, 5).ttl_s() == 3


def test_sliding_log_entry_leaves_exactly_one_window_later() -> None:
    log = SlidingLog(2, 1.0)
    _, state = log.decide(None, 0.0, 2)
    refused, _ = log.decide(state, 0.5, 1)
    assert not refused.allowed
    assert refused.retry_after_s == 0.5

    assert not log.decide(state, 0.999, 1)[0].allowed
    verdict, _ = log.decide(state, 1.0, 2)  # the window is (0, 1]: the entry at 0 is out
    assert verdict.allowed
