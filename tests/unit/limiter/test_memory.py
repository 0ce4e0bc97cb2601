"""The in-memory backend: atomic multi-policy decisions, reservations, bounds."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.limiter.algorithms import FixedWindow, SlidingCounter, SlidingLog, TokenBucket
from sluice.limiter.memory import MemoryBackend
from sluice.limiter.policies import Check, Policies, Subjects
from sluice.limiter.settings import PolicySettings
from tests.support import FakeClock


def check(key: str, limit: float, cost: float = 1, unit: str = "requests") -> Check:
    return Check(
        policy=key,
        subject=f"api_key:{key}",
        key=key,
        unit=unit,  # type: ignore[arg-type]
        algorithm=TokenBucket(limit, 1),
        cost=cost,
    )


async def test_a_refusal_by_one_policy_consumes_nothing_from_the_others() -> None:
    backend = MemoryBackend(FakeClock())
    wide, narrow = check("wide", 10), check("narrow", 2)

    results = [(await backend.acquire([wide, narrow], f"r{i}")).allowed for i in range(4)]

    assert results == [True, True, False, False]
    # The two refusals took nothing from "wide": 8 of 10 are left.
    outcome = await backend.acquire([check("wide", 10, cost=8)], "x")
    assert outcome.allowed
    assert outcome.verdicts[0].remaining == 0


async def test_a_refusal_reports_every_verdict() -> None:
    backend = MemoryBackend(FakeClock())
    await backend.acquire([check("a", 1)], "r")

    outcome = await backend.acquire([check("a", 1), check("b", 5)], "r2")

    assert not outcome.allowed
    assert [v.allowed for v in outcome.verdicts] == [False, True]


algorithms = st.sampled_from(
    [TokenBucket(5, 1), FixedWindow(5, 1), SlidingLog(5, 1), SlidingCounter(5, 1)]
)


@settings(max_examples=150, deadline=None)
@given(
    limits=st.lists(algorithms, min_size=1, max_size=4),
    requests=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=500),  # ms to advance
            st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=4),  # limits
            st.integers(min_value=1, max_value=4),  # cost
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_decisions_are_all_or_nothing(
    limits: list[object], requests: list[tuple[int, list[int], int]]
) -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock)
    for advance_ms, chosen, cost in requests:
        clock.advance(advance_ms / 1000)
        checks = [
            Check(f"p{i}", f"s{i}", f"p{i}", "requests", limits[i % len(limits)], float(cost))  # type: ignore[arg-type]
            for i in sorted(set(chosen))
        ]
        before = copy.deepcopy(backend._states)

        outcome = backend.decide(checks, "r")

        alone = [
            c.algorithm.decide(before.get(c.key), clock.monotonic(), c.cost)[0] for c in checks
        ]
        assert outcome.allowed == all(v.allowed for v in alone)
        assert outcome.verdicts == alone
        if not outcome.allowed:
            assert backend._states == before


async def test_reconcile_refunds_and_charges_every_token_limit_once() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock)
    policies = Policies(
        [
            PolicySettings(name="rpm", limit=100, refill_per_second=1),
            PolicySettings(name="tpm", unit="tokens", limit=1000, refill_per_second=1),
            PolicySettings(
                name="tenant_tpm",
                scope="tenant",
                unit="tokens",
                algorithm="fixed_window",
                limit=1000,
                window_s=60,
            ),
        ]
    )
    subjects = Subjects(api_key="k", tenant="t")
    assert (await backend.acquire(policies.checks(subjects, 1, 800), "r1")).allowed
    assert not (await backend.acquire(policies.checks(subjects, 1, 300), "r2")).allowed

    settled = await backend.reconcile("r1", 100)  # 700 tokens back to both token limits

    assert settled.applied
    assert settled.reserved_tokens == 800
    outcome = await backend.acquire(policies.checks(subjects, 1, 900), "r3")
    assert outcome.allowed
    assert [round(v.remaining) for v in outcome.verdicts] == [98, 0, 0]
    assert not (await backend.reconcile("r1", 100)).applied  # only once
    # A charge beyond the estimate is debt: nothing more until it is repaid.
    assert (await backend.reconcile("r3", 1000)).applied
    refused = await backend.acquire(policies.checks(subjects, 1, 0), "r4")
    assert not refused.allowed
    assert refused.verdicts[1].retry_after_s == 100  # 100 tokens of debt at 1/s


async def test_requests_only_admissions_keep_no_reservation() -> None:
    backend = MemoryBackend(FakeClock())

    await backend.acquire([check("a", 5)], "r")

    assert not (await backend.reconcile("r", 10)).applied
    assert backend._reservations == {}


async def test_reservations_expire() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock, reservation_ttl_s=10)
    await backend.acquire([check("a", 500, cost=100, unit="tokens")], "r")

    clock.advance(10)

    assert not (await backend.reconcile("r", 0)).applied


async def test_least_recently_used_state_is_forgotten_beyond_the_bound() -> None:
    backend = MemoryBackend(FakeClock(), max_keys=2)
    for key in ("a", "b", "a", "c"):  # "a" is written again, so "b" is the oldest
        await backend.acquire([check(key, 2)], "r")

    assert not (await backend.acquire([check("a", 2, cost=1)], "r")).allowed  # remembered
    assert (await backend.acquire([check("b", 2, cost=2)], "r")).allowed  # fresh bucket
    assert len(backend._states) == 2


async def test_reservations_are_bounded_too() -> None:
    backend = MemoryBackend(FakeClock(), max_keys=3)
    for index in range(10):
        await backend.acquire([check(f"k{index}", 500, cost=1, unit="tokens")], f"r{index}")

    assert list(backend._reservations) == ["r7", "r8", "r9"]


async def test_long_caller_chosen_keys_are_bounded_by_bytes() -> None:
    backend = MemoryBackend(FakeClock(), max_keys=1_000_000, max_bytes=400_000)
    for index in range(200):
        key = f"per_user|{'u' * 5_000}{index}"
        outcome = await backend.acquire([check(key, 10)], f"r{index}")
        assert outcome.allowed
        assert backend.bytes_used <= backend.max_bytes
    # ~5 KB a state within 200 KB (half the bound): about 40 kept, not 200.
    assert 20 <= len(backend._states) <= 45
    assert f"per_user|{'u' * 5_000}199" in backend._states
