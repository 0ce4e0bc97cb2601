"""Leases: permits granted in advance keep every leasable algorithm's promise.

The properties drive the in-memory backend on a FakeClock with random direct admissions
and lease grants; every leased permit is "used" at a random moment before its ttl runs
out (or never). The promise is then checked over the moments of USE, not of grant:
token bucket, at most capacity + rate * T in any interval of length T; fixed window and
sliding counter, at most `limit` per aligned window. Decisions and lease sizes are also
compared with exact reference models, so a lease is never smaller (nor a request refused
sooner) than the headroom rule allows. Times are multiples of 1/64 s and windows powers
of two, so float arithmetic is exact, as in test_algorithms.py.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sluice.core.errors import ValidationError
from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.algorithms import (
    Algorithm,
    FixedWindow,
    LeaseAsk,
    SlidingCounter,
    SlidingLog,
    TokenBucket,
    grant_lease,
    whole_ms,
)
from sluice.limiter.fallback import FallbackBackend
from sluice.limiter.memory import MemoryBackend
from sluice.limiter.policies import Check, Policies
from sluice.limiter.redis import RedisBackend
from sluice.limiter.service import LimiterServicer
from sluice.limiter.settings import LeaseSettings, LimiterSettings, PolicySettings, RedisSettings
from sluice.limiter.v1 import limiter_pb2
from tests.support import FakeClock
from tests.unit.limiter.test_algorithms import ReferenceBucket

TICK = Fraction(1, 64)


class Reference(Protocol):
    def margin(self, now: Fraction, cost: Fraction) -> Fraction:
        """Room left after admitting `cost` at `now` (>= 0 means admit)."""
        ...

    def admit(self, now: Fraction, cost: Fraction) -> None: ...

    def lease(self, now: Fraction, requests: int, ttl: Fraction) -> None: ...

    def lease_ttl(self, now: Fraction, ttl: Fraction) -> Fraction: ...


class PocketBucket(ReferenceBucket):
    """A token bucket whose leased tokens sit in a pocket until the last lease lapses."""

    def __init__(self, capacity: Fraction, rate: Fraction) -> None:
        super().__init__(capacity, rate)
        self.pocket, self.lapses = Fraction(0), Fraction(0)

    def _refill(self, now: Fraction) -> None:
        if self.pocket and now >= self.lapses:
            self.tokens = min(
                self.capacity - self.pocket, self.tokens + (self.lapses - self.updated) * self.rate
            )
            self.updated, self.pocket = self.lapses, Fraction(0)
        cap = self.capacity - self.pocket
        self.tokens = min(cap, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def lease(self, now: Fraction, requests: int, ttl: Fraction) -> None:
        self.tokens -= requests
        self.pocket += requests
        self.lapses = max(self.lapses, now + ttl)

    def lease_ttl(self, now: Fraction, ttl: Fraction) -> Fraction:
        return ttl


class Windows:
    """Counts per aligned window; the sliding counter also weighs the previous one."""

    def __init__(self, limit: Fraction, window: Fraction, sliding: bool) -> None:
        self.limit, self.window, self.sliding = limit, window, sliding
        self.used: dict[int, Fraction] = {}

    def margin(self, now: Fraction, cost: Fraction) -> Fraction:
        index = math.floor(now / self.window)
        estimate = self.used.get(index, Fraction(0))
        if self.sliding:
            weight = 1 - (now - index * self.window) / self.window
            estimate += self.used.get(index - 1, Fraction(0)) * weight
        return self.limit - estimate - cost

    def admit(self, now: Fraction, cost: Fraction) -> None:
        index = math.floor(now / self.window)
        self.used[index] = self.used.get(index, Fraction(0)) + cost

    def lease(self, now: Fraction, requests: int, ttl: Fraction) -> None:
        self.admit(now, Fraction(requests))

    def lease_ttl(self, now: Fraction, ttl: Fraction) -> Fraction:
        return min(ttl, (math.floor(now / self.window) + 1) * self.window - now)


Step = tuple[int, int, int, list[int]]
"""(ticks to advance, cost, permits asked (0: no lease), use of each permit: k means
at k/64 of the ttl after the grant, -1 never)."""

steps = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=100),
        st.integers(min_value=1, max_value=3),
        st.integers(min_value=0, max_value=12),
        st.lists(st.integers(min_value=-1, max_value=63), max_size=12),
    ),
    min_size=1,
    max_size=40,
)
headrooms = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])
ttls = st.sampled_from([0.25, 0.5, 1.0, 2.0, 8.0])


def drive(
    algorithm: Algorithm,
    reference: Reference,
    run: list[Step],
    ttl_s: float,
    headroom: float,
    max_requests: int = 8,
) -> tuple[list[tuple[Fraction, Fraction]], int]:
    """Run the steps through MemoryBackend; the admissions by time of use, permits leased."""
    clock = FakeClock(monotonic=0.0)
    backend = MemoryBackend(clock)
    uses: list[tuple[Fraction, Fraction]] = []
    leased = 0
    now = Fraction(0)
    for number, (ticks, raw_cost, asked, when) in enumerate(run):
        clock.advance(float(ticks * TICK))
        now += ticks * TICK
        cost = Fraction(raw_cost)
        check = Check("p", "api_key:k", "k", "requests", algorithm, float(cost))
        ask = LeaseAsk(min(asked, max_requests), ttl_s, headroom) if asked else None
        margin = reference.margin(now, cost)

        outcome = backend.decide([check], f"r{number}", ask)

        assert outcome.allowed == (margin >= 0), (float(now), raw_cost, float(margin))
        if not outcome.allowed:
            assert outcome.lease is None
            continue
        reference.admit(now, cost)
        uses.append((now, cost))
        # The lease is exactly what the headroom rule allows (never less, never more).
        expected = 0
        ttl = Fraction(whole_ms(float(reference.lease_ttl(now, Fraction(ttl_s)))))
        if ask is not None and ttl > 0:
            expected = max(
                0, min(ask.requests, math.floor(margin - Fraction(headroom) * int(algorithm.limit)))
            )
        granted = outcome.lease.requests if outcome.lease else 0
        assert granted == expected, (float(now), float(margin), asked)
        if outcome.lease is None:
            continue
        assert Fraction(outcome.lease.ttl_s) == ttl
        # The limit keeps min_headroom free after the lease.
        assert margin - granted >= Fraction(headroom) * int(algorithm.limit)
        assert outcome.verdicts[0].remaining == float(max(Fraction(0), margin - granted))
        reference.lease(now, granted, ttl)
        leased += granted
        for permit in range(granted):
            k = when[permit] if permit < len(when) else -1
            if k >= 0:
                uses.append((now + k * TICK * ttl, Fraction(1)))
    return uses, leased


def bucket_promise(
    uses: list[tuple[Fraction, Fraction]], capacity: Fraction, rate: Fraction
) -> None:
    """Any interval [a, b] holds at most capacity + rate * (b - a) uses (O(n) scan)."""
    total = Fraction(0)
    lowest: Fraction | None = None  # min over starts a of (uses before a) - rate * a
    by_time: dict[Fraction, Fraction] = {}
    for t, c in uses:
        by_time[t] = by_time.get(t, Fraction(0)) + c
    for t in sorted(by_time):
        start = total - rate * t
        lowest = start if lowest is None else min(lowest, start)
        total += by_time[t]
        assert total - rate * t - lowest <= capacity, (float(t), float(total))


def window_promise(uses: list[tuple[Fraction, Fraction]], window: Fraction, limit: int) -> None:
    per: dict[int, Fraction] = {}
    for t, c in uses:
        index = math.floor(t / window)
        per[index] = per.get(index, Fraction(0)) + c
    assert all(used <= limit for used in per.values()), per


limits = st.integers(min_value=1, max_value=24)
windows = st.sampled_from([Fraction(1, 4), Fraction(1, 2), 1, 2, 4])


@settings(max_examples=300, deadline=None)
@given(
    capacity=limits,
    rate=st.sampled_from([0.25, 1.0, 4.0, 16.0]),
    ttl_s=ttls,
    headroom=headrooms,
    run=steps,
)
def test_token_bucket_with_pockets_bounds_every_interval_of_uses(
    capacity: int, rate: float, ttl_s: float, headroom: float, run: list[Step]
) -> None:
    reference = PocketBucket(Fraction(capacity), Fraction(rate))
    uses, _ = drive(TokenBucket(float(capacity), rate), reference, run, ttl_s, headroom)
    bucket_promise(uses, Fraction(capacity), Fraction(rate))


@settings(max_examples=300, deadline=None)
@given(limit=limits, window=windows, ttl_s=ttls, headroom=headrooms, run=steps)
def test_fixed_window_leases_keep_each_window_within_its_limit(
    limit: int, window: Fraction, ttl_s: float, headroom: float, run: list[Step]
) -> None:
    reference = Windows(Fraction(limit), Fraction(window), sliding=False)
    uses, _ = drive(FixedWindow(float(limit), float(window)), reference, run, ttl_s, headroom)
    window_promise(uses, Fraction(window), limit)


@settings(max_examples=300, deadline=None)
@given(limit=limits, window=windows, ttl_s=ttls, headroom=headrooms, run=steps)
def test_sliding_counter_leases_keep_each_aligned_window_within_its_limit(
    limit: int, window: Fraction, ttl_s: float, headroom: float, run: list[Step]
) -> None:
    reference = Windows(Fraction(limit), Fraction(window), sliding=True)
    uses, _ = drive(SlidingCounter(float(limit), float(window)), reference, run, ttl_s, headroom)
    window_promise(uses, Fraction(window), limit)


def test_without_the_pocket_the_same_uses_would_overshoot() -> None:
    # The property above can fail: a bucket that refilled to full while permits sit in
    # a pocket admits capacity + pocket in an instant.
    bucket = TokenBucket(10, 1)
    ask = LeaseAsk(4, 8.0, 0.0)
    verdict, state = bucket.decide(None, 0.0, 1)
    states = [state]
    lease = grant_lease([bucket], [verdict], states, 0.0, ask)
    assert lease is not None and lease.requests == 4
    # Just before the pocket lapses, 8 s on: the bucket refilled only to 10 - 4.
    at = 7.984375
    assert bucket.decide(states[0], at, 6)[0].allowed
    assert not bucket.decide(states[0], at, 7)[0].allowed
    forgetful = states[0][:2]  # the same tokens without the pocket
    assert bucket.decide(forgetful, at, 10)[0].allowed  # 10 + 4 pocketed uses: too many
    # Once the pocket lapsed, the bucket refills to full capacity again.
    assert bucket.decide(states[0], 8.0 + 5.0, 10)[0].allowed


def test_a_stored_two_element_bucket_state_reads_as_nothing_leased() -> None:
    bucket = TokenBucket(10, 2)
    old = [3.0, 100.0]  # written before leases existed

    verdict, state = bucket.decide(old, 101.5, 1)

    assert verdict.allowed
    assert verdict.remaining == 5.0  # 3 + 1.5 s * 2 - 1
    assert state == [5.0, 101.5, 0.0, 0.0]
    assert bucket.adjust(old, 100.0, -20, 100.0) == [10.0, 100.0, 0.0, 0.0]
    assert not bucket.decide(old, 100.0, 4)[0].allowed


def test_refund_while_leased_never_fills_the_pocketed_share() -> None:
    bucket = TokenBucket(10, 1)
    verdict, state = bucket.decide(None, 0.0, 1)
    states = [state]
    grant_lease([bucket], [verdict], states, 0.0, LeaseAsk(5, 4.0, 0.0))

    refunded = bucket.adjust(states[0], 1.0, -100, 0.0)

    assert refunded[0] == 5.0  # capacity 10 - 5 in the pocket
    assert not bucket.decide(refunded, 1.0, 6)[0].allowed


def test_piecewise_refill_across_the_pocket_lapse() -> None:
    bucket = TokenBucket(10, 1)
    _, state = bucket.decide(None, 0.0, 10)  # empty
    state = bucket.lease([1.0, 0.0, 0.0, 0.0], 0.0, 1.0, 3.0)  # 0 tokens, 1 pocketed to 3 s
    # Refill to 3 s capped at 9 (3 tokens), then 2 more seconds capped at 10: 5.
    verdict, _ = bucket.decide(state, 5.0, 0)
    assert verdict.remaining == 5.0
    # Long after: full capacity again, not 9.
    assert bucket.decide(state, 100.0, 10)[0].allowed


@pytest.mark.parametrize("algorithm", [FixedWindow(100, 4), SlidingCounter(100, 4)], ids=str)
def test_window_leases_end_with_the_window(algorithm: Algorithm) -> None:
    backend = MemoryBackend(FakeClock(monotonic=6.5))  # window [4, 8): 1.5 s left
    check = Check("p", "s", "k", "requests", algorithm, 1.0)

    outcome = backend.decide([check], "r", LeaseAsk(10, 5.0, 0.5))

    assert outcome.lease is not None
    assert (outcome.lease.requests, outcome.lease.ttl_s) == (10, 1.5)
    assert outcome.verdicts[0].remaining == 89


async def test_a_window_ending_within_a_millisecond_grants_nothing() -> None:
    backend = MemoryBackend(FakeClock(monotonic=3.9995))  # 0.5 ms left in [0, 4)
    check = Check("p", "s", "k", "requests", FixedWindow(100, 4), 1.0)

    outcome = backend.decide([check], "r", LeaseAsk(10, 5.0, 0.5))

    assert outcome.allowed and outcome.lease is None
    assert outcome.verdicts[0].remaining == 99  # nothing taken beyond the request


def test_the_shortest_ttl_and_the_tightest_headroom_win_across_checks() -> None:
    backend = MemoryBackend(FakeClock(monotonic=1.75))
    checks = [
        Check("a", "s", "a", "requests", TokenBucket(100, 10), 1.0),
        Check("b", "s", "b", "requests", FixedWindow(20, 2), 1.0),  # 0.25 s left
    ]

    outcome = backend.decide(checks, "r", LeaseAsk(50, 1.0, 0.5))

    # b: 20 - 1 - 10 headroom = 9 permits; the window ends in 0.25 s.
    assert outcome.lease is not None
    assert (outcome.lease.requests, outcome.lease.ttl_s) == (9, 0.25)
    assert [v.remaining for v in outcome.verdicts] == [90, 10]


def test_no_lease_when_the_headroom_is_already_used() -> None:
    backend = MemoryBackend(FakeClock())
    check = Check("p", "s", "k", "requests", TokenBucket(10, 1), 1.0)
    first = backend.decide([check], "r1", LeaseAsk(8, 1.0, 0.5))
    assert first.lease is not None and first.lease.requests == 4  # 10 - 1 - 5

    second = backend.decide([check], "r2", LeaseAsk(8, 1.0, 0.5))

    assert second.allowed and second.lease is None  # 4 left < 5 headroom: request only
    assert second.verdicts[0].remaining == 4


def test_the_sliding_log_cannot_lease() -> None:
    with pytest.raises(ValueError, match="cannot lease"):
        SlidingLog(10, 1).lease([0.0, 1.0], 0.0, 1, 1.0)
    assert SlidingLog(10, 1).lease_ttl_s(0.0, 1.0) == 0


def test_whole_ms_never_rounds_up() -> None:
    assert whole_ms(1.5) == 1.5
    assert whole_ms(0.0159) == 0.015
    assert whole_ms(0.0009) == 0
    for ttl in (0.1 * k for k in range(1, 100)):
        assert whole_ms(ttl) <= ttl


# -- grant rules in the servicer -------------------------------------------------------


REGISTRIES: dict[int, CollectorRegistry] = {}
"""Each test servicer's metrics registry, by id of the servicer."""


def servicer(policies: list[PolicySettings], backend: object, **lease: object) -> LimiterServicer:
    host = ServiceHost("limiter", LimiterSettings(security={"mtls": False}))
    service = LimiterServicer(
        Policies(policies),
        backend,  # type: ignore[arg-type]
        host,
        LeaseSettings.model_validate(lease),
    )
    REGISTRIES[id(service)] = host.registry
    return service


def counted(service: LimiterServicer, name: str) -> float | None:
    return REGISTRIES[id(service)].get_sample_value(name)


ROOMY = PolicySettings(name="rpm", limit=1000, refill_per_second=1)


async def acquire(
    service: LimiterServicer, lease_requests: int, budget: limiter_pb2.Budget | None = None
) -> limiter_pb2.AcquireResponse:
    request = limiter_pb2.AcquireRequest(
        api_key_id="k", requests=1, tokens=10, lease_requests=lease_requests, budget=budget
    )
    context: Any = None  # Acquire does not use its context
    return await service.Acquire(request, context)


async def test_a_roomy_bucket_grants_what_is_asked_and_counts_it() -> None:
    service = servicer([ROOMY], MemoryBackend(FakeClock()))

    first = await acquire(service, 10)
    second = await acquire(service, 0)

    assert (first.lease.requests, first.lease.ttl_ms) == (10, 1000)
    assert (first.remaining, second.remaining) == (989, 988)
    assert not second.HasField("lease")
    assert counted(service, "sluice_limiter_leases_total") == 1
    assert counted(service, "sluice_limiter_leased_requests_total") == 10


async def test_max_requests_caps_the_lease() -> None:
    service = servicer([ROOMY], MemoryBackend(FakeClock()), max_requests=16)

    assert (await acquire(service, 1000)).lease.requests == 16


@pytest.mark.parametrize(
    "policy",
    [
        PolicySettings(name="tpm", unit="tokens", limit=100_000, refill_per_second=1),
        PolicySettings(name="rph", algorithm="sliding_log", limit=1000, window_s=3600),
    ],
    ids=["token_policy", "sliding_log"],
)
async def test_no_lease_when_any_matched_limit_cannot_lease(policy: PolicySettings) -> None:
    service = servicer([ROOMY, policy], MemoryBackend(FakeClock()))

    response = await acquire(service, 10)

    assert not response.HasField("lease")
    assert response.remaining == 999  # the request alone
    assert counted(service, "sluice_limiter_leases_total") == 0


async def test_no_lease_with_a_budget_or_when_disabled() -> None:
    budget = limiter_pb2.Budget(limit=100, period_s=3600)
    with_budget = await acquire(servicer([ROOMY], MemoryBackend(FakeClock())), 10, budget=budget)
    disabled = await acquire(servicer([ROOMY], MemoryBackend(FakeClock()), enabled=False), 10)
    zero = await acquire(servicer([ROOMY], MemoryBackend(FakeClock()), max_requests=0), 10)

    for response in (with_budget, disabled, zero):
        assert not response.HasField("lease")
        assert response.remaining == 999


async def test_a_negative_lease_request_is_invalid() -> None:
    with pytest.raises(ValidationError, match="lease_requests"):
        await acquire(servicer([ROOMY], MemoryBackend(FakeClock())), -1)


async def test_no_lease_on_the_local_fallback_share() -> None:
    clock = FakeClock()
    unreachable = RedisBackend(
        RedisSettings(url="redis://127.0.0.1:9/0", timeout_s=0.2), clock=clock
    )
    backend = FallbackBackend(
        unreachable, MemoryBackend(clock), clock=clock, replicas=2, retry_interval_s=60
    )
    service = servicer([ROOMY], backend)
    try:
        response = await acquire(service, 10)
    finally:
        await backend.close()

    assert response.local_fallback
    assert not response.HasField("lease")
    assert response.remaining == 499  # the local half, less the request alone
