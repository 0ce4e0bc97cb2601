"""The in-memory token buckets, driven by a fake clock."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.limiter.settings import BucketSettings
from sluice.limiter.token_bucket import TokenBuckets
from tests.support import FakeClock


def buckets(
    clock: FakeClock,
    capacity: float = 4.0,
    rate: float = 2.0,
    *,
    overrides: dict[str, BucketSettings] | None = None,
    max_subjects: int = 100,
) -> TokenBuckets:
    return TokenBuckets(
        clock, BucketSettings(capacity=capacity, refill_per_second=rate), overrides, max_subjects
    )


def test_a_new_subject_may_burst_up_to_capacity_and_no_further() -> None:
    clock = FakeClock()
    limiter = buckets(clock, capacity=4, rate=2)

    decisions = [limiter.take("k") for _ in range(5)]

    assert [d.allowed for d in decisions] == [True, True, True, True, False]
    assert [d.remaining for d in decisions[:4]] == [3, 2, 1, 0]
    assert all(d.capacity == 4 for d in decisions)


def test_tokens_refill_at_the_configured_rate() -> None:
    clock = FakeClock()
    limiter = buckets(clock, capacity=4, rate=2)
    for _ in range(4):
        assert limiter.take("k").allowed

    clock.advance(1.0)  # two tokens back

    assert limiter.take("k").allowed
    assert limiter.take("k").allowed
    assert not limiter.take("k").allowed


def test_refill_never_exceeds_capacity() -> None:
    clock = FakeClock()
    limiter = buckets(clock, capacity=4, rate=2)
    limiter.take("k")

    clock.advance(3600)

    taken = [limiter.take("k").allowed for _ in range(6)]
    assert taken == [True, True, True, True, False, False]


def test_retry_after_is_exactly_the_wait_for_the_missing_tokens() -> None:
    clock = FakeClock()
    limiter = buckets(clock, capacity=4, rate=2)
    for _ in range(4):
        limiter.take("k")

    denied = limiter.take("k", 3.0)

    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(1.5)
    assert denied.reset_after_s == pytest.approx(2.0)  # empty -> full at 2/s
    clock.advance(1.25)
    assert not limiter.take("k", 3.0).allowed  # 2.5 tokens: still short
    clock.advance(0.25)
    assert limiter.take("k", 3.0).allowed


def test_denial_does_not_consume_tokens() -> None:
    clock = FakeClock()
    limiter = buckets(clock, capacity=4, rate=2)
    limiter.take("k", 3.0)

    assert not limiter.take("k", 2.0).allowed
    assert limiter.take("k", 1.0).allowed


def test_reset_after_reports_time_until_full() -> None:
    clock = FakeClock()
    limiter = buckets(clock, capacity=10, rate=4)

    first = limiter.take("k", 6.0)

    assert first.allowed
    assert first.remaining == 4
    assert first.retry_after_s == 0
    assert first.reset_after_s == pytest.approx(1.5)


def test_cost_above_capacity_is_refused_forever() -> None:
    clock = FakeClock()
    limiter = buckets(clock, capacity=4, rate=2)

    refused = limiter.take("k", 5.0)

    assert not refused.allowed
    assert math.isinf(refused.retry_after_s)
    clock.advance(10_000)
    assert not limiter.take("k", 5.0).allowed
    # The refusal took nothing.
    assert limiter.take("k", 4.0).allowed


def test_subjects_are_independent_and_overrides_apply() -> None:
    clock = FakeClock()
    limiter = buckets(
        clock,
        capacity=2,
        rate=1,
        overrides={"vip": BucketSettings(capacity=5, refill_per_second=1)},
    )

    assert [limiter.take("a").allowed for _ in range(3)] == [True, True, False]
    assert [limiter.take("b").allowed for _ in range(3)] == [True, True, False]
    vip = [limiter.take("vip") for _ in range(6)]
    assert [d.allowed for d in vip] == [True] * 5 + [False]
    assert vip[0].capacity == 5


def test_least_recently_used_subject_is_forgotten_beyond_the_bound() -> None:
    clock = FakeClock()
    limiter = buckets(clock, capacity=1, rate=0.001, max_subjects=2)
    assert limiter.take("a").allowed
    assert limiter.take("b").allowed
    assert not limiter.take("a").allowed  # touches a: b is now least recently used

    assert limiter.take("c").allowed  # third subject evicts b

    assert not limiter.take("a").allowed  # a is still tracked (and empty)
    assert limiter.take("b").allowed  # b was forgotten: a fresh, full bucket


def test_bound_holds_for_many_subjects() -> None:
    clock = FakeClock()
    limiter = buckets(clock, capacity=1, rate=0.001, max_subjects=3)
    for index in range(50):
        assert limiter.take(f"s{index}").allowed

    # The last three are remembered (empty); everything older starts afresh.
    assert [limiter.take(f"s{i}").allowed for i in (47, 48, 49)] == [False, False, False]
    assert limiter.take("s0").allowed


def test_time_going_backwards_does_not_mint_tokens() -> None:
    class Rewinding(FakeClock):
        def rewind(self, seconds: float) -> None:
            self._monotonic -= seconds

    clock = Rewinding()
    limiter = buckets(clock, capacity=2, rate=1)
    limiter.take("k", 2.0)

    clock.rewind(100)

    assert not limiter.take("k").allowed


# -- property: the implementation against an exact reference model --------------------


class ReferenceBucket:
    """The textbook token bucket in exact rational arithmetic."""

    def __init__(self, capacity: float, rate: float) -> None:
        self.capacity = Fraction(capacity)
        self.rate = Fraction(rate)
        self.tokens = self.capacity
        self.updated: Fraction | None = None

    def refill(self, now: Fraction) -> None:
        if self.updated is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, now: Fraction, cost: Fraction) -> bool:
        self.refill(now)
        if cost <= self.tokens:
            self.tokens -= cost
            return True
        return False


step = st.tuples(
    st.integers(min_value=0, max_value=3_000),  # milliseconds to advance before the take
    st.integers(min_value=1, max_value=12),  # cost
)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=10),
    rate=st.sampled_from([0.25, 0.5, 1.0, 3.0, 7.5, 100.0]),
    steps=st.lists(step, min_size=1, max_size=60),
)
def test_matches_reference_and_never_over_admits(
    capacity: int, rate: float, steps: list[tuple[int, int]]
) -> None:
    clock = FakeClock(monotonic=0.0)
    limiter = buckets(clock, capacity=float(capacity), rate=rate)
    reference = ReferenceBucket(capacity, rate)
    elapsed_ms = 0
    admitted = Fraction(0)
    tolerance = Fraction(1, 10**6)

    for advance_ms, cost in steps:
        clock.advance(advance_ms / 1000)
        elapsed_ms += advance_ms
        now = Fraction(elapsed_ms, 1000)
        reference.refill(now)
        ambiguous = abs(reference.tokens - cost) < tolerance
        expected = reference.take(now, Fraction(cost))

        decision = limiter.take("k", float(cost))

        if not ambiguous:
            assert decision.allowed == expected, (now, cost, reference.tokens)
        if decision.allowed:
            admitted += cost
        # Never more than a full bucket plus what the rate refilled since the start.
        assert admitted <= capacity + reference.rate * now + tolerance
        assert 0 <= decision.remaining <= capacity
        if not decision.allowed and cost <= capacity:
            # retry_after is the time the reference needs to hold `cost` tokens.
            needed = (Fraction(cost) - reference.tokens) / reference.rate
            assert decision.retry_after_s == pytest.approx(float(needed), abs=1e-6)
        if expected and not ambiguous:
            reference.tokens = Fraction(decision.remaining)  # resync float drift


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=20),
    rate=st.floats(min_value=0.01, max_value=1_000, allow_nan=False, allow_infinity=False),
    drained=st.integers(min_value=1, max_value=20),
    cost=st.integers(min_value=1, max_value=20),
)
def test_waiting_retry_after_is_enough(capacity: int, rate: float, drained: int, cost: int) -> None:
    clock = FakeClock(monotonic=0.0)
    limiter = buckets(clock, capacity=float(capacity), rate=rate)
    limiter.take("k", float(min(drained, capacity)))

    denied = limiter.take("k", float(cost))
    if denied.allowed or cost > capacity:
        return

    clock.advance(denied.retry_after_s * (1 + 1e-9) + 1e-9)
    assert limiter.take("k", float(cost)).allowed
