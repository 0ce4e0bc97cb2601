"""The adaptive limit finds capacity: growth from the initial value, one cut per round of
admissions, the ceiling from the memory budget (fake clock, no sleeps)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from sluice.router.admission import (
    AdaptiveSettings,
    Admission,
    AdmissionSettings,
    Aimd,
    LoadSampler,
    Ticket,
)
from tests.support import FakeClock


def test_the_default_ceiling_is_the_memory_budget_over_the_cost_of_a_stream() -> None:
    defaults = AdaptiveSettings()
    assert defaults.max_limit is None
    assert defaults.ceiling == 512 * 1024 // 96 == 5461
    assert AdaptiveSettings(memory_budget_mb=64, stream_memory_kb=64).ceiling == 1024
    assert AdaptiveSettings(memory_budget_mb=64, max_limit=10).ceiling == 10
    assert Aimd(defaults).limit == 64  # starts low, not at the ceiling
    assert Aimd(AdaptiveSettings(initial_limit=50, max_limit=20)).limit == 20


def test_the_limit_grows_by_a_step_per_healthy_first_token_while_in_use() -> None:
    aimd = Aimd(AdaptiveSettings(initial_limit=10, min_limit=2, target_ttft_ms=500))
    aimd.observe(0.1, demand=4)  # less than half the limit used: no evidence, no growth
    assert aimd.limit == 10
    aimd.observe(0.1, demand=5)
    assert aimd.limit == 11
    for _ in range(100):
        aimd.observe(0.1, demand=1000)
    assert aimd.limit == 111


def test_the_limit_never_grows_past_the_ceiling_derived_from_memory() -> None:
    settings = AdaptiveSettings(initial_limit=8, memory_budget_mb=1, stream_memory_kb=64)
    aimd = Aimd(settings)
    assert aimd.ceiling == 16
    for _ in range(100):
        aimd.observe(0.01, demand=1000)
    assert aimd.limit == 16


def test_slow_first_tokens_cut_once_per_round_of_admissions() -> None:
    aimd = Aimd(AdaptiveSettings(initial_limit=1000, min_limit=4, target_ttft_ms=1000))
    # 1,000 streams admitted at t=0 answer slowly at t=5: one cut, not a collapse to 4.
    for _ in range(1000):
        aimd.observe(5.0, admitted_at=0.0, now=5.0, demand=2000)
    assert aimd.limit == 900
    assert not aimd.growing
    # A stream admitted after that cut and still slow cuts again ...
    aimd.observe(2.0, admitted_at=5.5, now=7.5, demand=2000)
    assert aimd.limit == 810
    # ... but one admitted before it does not.
    aimd.observe(2.0, admitted_at=6.0, now=8.0, demand=2000)
    assert aimd.limit == 810
    # Healthy again: growth resumes.
    aimd.observe(0.2, admitted_at=8.0, now=8.2, demand=2000)
    assert aimd.limit == 811
    assert aimd.growing


def test_cuts_stop_at_the_floor() -> None:
    aimd = Aimd(AdaptiveSettings(initial_limit=10, min_limit=6, target_ttft_ms=100))
    for step in range(20):
        aimd.observe(1.0, admitted_at=float(step), now=float(step) + 0.5)
    assert aimd.limit == 6
    aimd.observe(0.0, overloaded=True)
    assert aimd.limit == 6


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_first_tokens_raise_the_limit_and_start_waiting_streams_at_once() -> None:
    # Long streams: nobody finishes, yet the queue drains as first tokens come in time.
    clock = FakeClock()
    registry = CollectorRegistry()
    settings = AdmissionSettings(
        adaptive=AdaptiveSettings(initial_limit=2, min_limit=1, max_limit=6, target_ttft_ms=500)
    )
    sampler = LoadSampler(clock, 0.0, cpu=lambda: 0.0, memory=lambda: 0.0)
    admission = Admission(settings, clock, registry, sampler)
    tasks = [
        asyncio.create_task(admission.acquire("b", "t", "normal", deadline=clock.monotonic() + 60))
        for _ in range(10)
    ]
    await _settle()
    running = [task.result() for task in tasks if task.done()]
    assert len(running) == 2

    def gauge(name: str) -> float | None:
        return registry.get_sample_value(name, {"backend": "b"})

    assert gauge("sluice_router_concurrency_ceiling") == 6
    answered: set[int] = set()
    while len(answered) < len(running):
        clock.advance(0.1)
        for ticket in list(running):
            if id(ticket) not in answered:
                answered.add(id(ticket))
                admission.first_token(ticket)
        await _settle()
        running = [task.result() for task in tasks if task.done()]
    # 2 -> 6: each healthy first token admitted one more, up to the ceiling.
    assert len(running) == 6
    assert gauge("sluice_router_concurrency_limit") == 6
    assert gauge("sluice_router_admitted_in_flight") == 6
    for ticket in running:
        admission.release(ticket)
    await _settle()
    assert all(task.done() for task in tasks)
    for task in tasks:
        later: Ticket = task.result()
        if later not in running:
            admission.release(later)


async def test_a_deep_queue_is_not_refused_while_the_limit_can_still_grow() -> None:
    # 500 waiters for a limit of 2, 30 s streams, a 300 s deadline: at today's limit the
    # wait looks like 2 h; at the ceiling (the limit grows while answers are healthy) 15 s.
    clock = FakeClock()
    settings = AdmissionSettings(
        adaptive=AdaptiveSettings(initial_limit=2, min_limit=1, max_limit=1000)
    )
    sampler = LoadSampler(clock, 0.0, cpu=lambda: 0.0, memory=lambda: 0.0)
    admission = Admission(settings, clock, CollectorRegistry(), sampler)
    gate = admission.gate("b")
    for _ in range(5):
        gate.service.add(30.0)
    tasks = [
        asyncio.create_task(admission.acquire("b", "t", "normal", clock.monotonic() + 300))
        for _ in range(500)
    ]
    await _settle()
    assert len(gate.queue) == 498
    assert not any(task.done() and task.exception() for task in tasks)
    # Once first tokens come slowly, the estimate uses the cut limit: refused at once.
    gate.aimd.observe(10.0)
    late = asyncio.create_task(admission.acquire("b", "t", "normal", clock.monotonic() + 300))
    await _settle()
    assert late.done() and type(late.exception()).__name__ == "DeadlineExceededError"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
