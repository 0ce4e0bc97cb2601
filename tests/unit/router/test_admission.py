"""Admission: classes, the fair queue, AIMD, deadlines and shedding, on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from sluice.core.errors import DeadlineExceededError, ServiceUnavailableError
from sluice.router.admission import (
    AdaptiveSettings,
    Admission,
    AdmissionSettings,
    Aimd,
    FairQueue,
    LatencyWindow,
    LoadSampler,
    PriorityClass,
    ScheduleSettings,
    request_class,
)
from tests.support import FakeClock


def test_class_comes_from_the_tier_and_can_only_be_lowered() -> None:
    assert request_class("premium", []) == "premium"
    assert request_class("premium", [("x-sluice-priority", "background")]) == "background"
    assert request_class("normal", [("x-sluice-priority", b"background")]) == "background"
    # Never raised, and nonsense is ignored.
    assert request_class("background", [("x-sluice-priority", "premium")]) == "background"
    assert request_class("normal", [("x-sluice-priority", "urgent!!")]) == "normal"
    assert request_class("mystery-tier", []) == "normal"


def _order(queue: FairQueue) -> list[tuple[str, str]]:
    found = []
    while (waiter := queue.pop()) is not None:
        found.append((waiter.tenant, waiter.klass))
    return found


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


async def test_queue_serves_higher_classes_first() -> None:
    queue = FairQueue({})
    queue.push("a", "background", _future())
    queue.push("a", "normal", _future())
    queue.push("a", "premium", _future())
    queue.push("a", "critical", _future())
    assert [k for _, k in _order(queue)] == ["premium", "critical", "normal", "background"]
    assert len(queue) == 0


async def test_a_tenant_sending_ten_times_more_does_not_starve_the_other() -> None:
    queue = FairQueue({})
    for _ in range(20):
        queue.push("heavy", "normal", _future())
    for _ in range(2):
        queue.push("light", "normal", _future())
    served = [tenant for tenant, _ in _order(queue)]
    # The light tenant's two requests go out among the first four, not after 20.
    assert served[:4].count("light") == 2
    assert served.count("heavy") == 20


async def test_class_wins_across_tenants_and_fairness_decides_within_a_class() -> None:
    queue = FairQueue({})
    for _ in range(3):
        queue.push("light", "background", _future())
    for _ in range(10):
        queue.push("heavy", "normal", _future())
    queue.push("light", "normal", _future())
    queue.push("heavy", "premium", _future())
    served = _order(queue)
    assert served[0] == ("heavy", "premium")
    # Normal before any background, whoever sends it; within normal, the light
    # tenant's request goes out in its fair turn, not after the heavy backlog.
    assert [k for _, k in served[1:12]] == ["normal"] * 11
    assert served[1:12].index(("light", "normal")) <= 1
    assert served[12:] == [("light", "background")] * 3


async def test_the_shed_candidate_is_the_lowest_class_of_the_busiest_tenant() -> None:
    queue = FairQueue({})
    assert queue.lowest() is None
    queue.push("a", "normal", _future())
    first_bg = queue.push("b", "background", _future())
    newest_bg = queue.push("b", "background", _future())
    queue.push("c", "background", _future())
    assert queue.lowest() is newest_bg
    queue.cancel(newest_bg)
    assert queue.lowest() is first_bg  # b and c tie at one each: the first found
    queue.cancel(first_bg)
    assert queue.lowest() is not None and queue.lowest().tenant == "c"  # type: ignore[union-attr]


async def test_deadline_estimate_counts_own_backlog_and_other_tenants_turns() -> None:
    queue = FairQueue({})
    for _ in range(10):
        queue.push("heavy", "normal", _future())
    assert queue.ahead_of("light", "normal") == 1  # one heavy turn, then light
    assert queue.ahead_of("heavy", "normal") == 10
    assert queue.ahead_of("heavy", "premium") == 0
    queue.push("light", "normal", _future())
    assert queue.ahead_of("heavy", "normal") == 11
    assert queue.ahead_of("light", "normal") == 1 + 2


async def test_tenant_weights_share_capacity_proportionally() -> None:
    queue = FairQueue({"big": 3.0})
    for _ in range(30):
        queue.push("big", "normal", _future())
        queue.push("small", "normal", _future())
    first = [tenant for tenant, _ in _order(queue)][:20]
    assert first.count("big") == 15
    assert first.count("small") == 5


async def test_cancelled_waiters_are_skipped_and_counted_out() -> None:
    queue = FairQueue({})
    gone = queue.push("a", "normal", _future())
    queue.push("b", "normal", _future())
    queue.cancel(gone)
    queue.cancel(gone)  # idempotent
    assert len(queue) == 1
    assert queue.by_class["normal"] == 1
    assert _order(queue) == [("b", "normal")]


def test_aimd_grows_while_fast_and_backs_off_when_slow() -> None:
    aimd = Aimd(AdaptiveSettings(initial_limit=10, min_limit=2, max_limit=12, target_ttft_ms=100))
    for _ in range(30):
        aimd.observe(0.05)
    assert aimd.limit == 12  # capped
    aimd.observe(0.5)
    assert aimd.limit == 10  # 12 * 0.9
    for _ in range(50):
        aimd.observe(1.0)
    assert aimd.limit == 2  # floored
    aimd.observe(0.01, overloaded=True)
    assert aimd.limit == 2


def test_latency_window_quantile() -> None:
    window = LatencyWindow(100)
    assert window.quantile(0.95) == 0.0
    for value in range(1, 101):
        window.add(float(value))
    assert window.quantile(0.95) == 95.0
    assert window.mean() == 50.5


async def _settle() -> None:
    """Let woken tasks run (no time passes: the event loop only cycles)."""
    for _ in range(20):
        await asyncio.sleep(0)


class _Load:
    def __init__(self) -> None:
        self.cpu = 0.1
        self.memory = 0.1


def _admission(
    clock: FakeClock, load: _Load, limit: int = 1, **fields: object
) -> tuple[Admission, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = AdmissionSettings(
        adaptive=AdaptiveSettings(initial_limit=limit, max_limit=limit, min_limit=1),
        shedding={"enabled": True},
        **fields,
    )
    sampler = LoadSampler(clock, 0.0, cpu=lambda: load.cpu, memory=lambda: load.memory)
    return Admission(settings, clock, registry, sampler), registry


async def _occupied(
    admission: Admission, clock: FakeClock, tenant: str = "t"
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Hold back end "b"'s one slot in a task until the returned event is set."""
    held, done = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with admission.slot("b", tenant, "normal", deadline=clock.monotonic() + 60):
            held.set()
            await done.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    return holder, done


@contextlib.asynccontextmanager
async def _holding(
    admission: Admission, klass: PriorityClass = "normal", tenant: str = "t"
) -> AsyncIterator[None]:
    async with admission.slot("b", tenant, klass, deadline=1e9):
        yield


async def test_requests_queue_for_capacity_and_start_in_class_order() -> None:
    clock, load = FakeClock(), _Load()
    admission, registry = _admission(clock, load)
    started: list[str] = []

    async def run(name: str, klass: PriorityClass) -> None:
        async with admission.slot("b", "t", klass, deadline=clock.monotonic() + 60):
            started.append(name)
            await release[name].wait()

    release = {n: asyncio.Event() for n in ("first", "bg", "prem")}
    first = asyncio.create_task(run("first", "normal"))
    await asyncio.sleep(0)
    bg = asyncio.create_task(run("bg", "background"))
    await asyncio.sleep(0)
    prem = asyncio.create_task(run("prem", "premium"))
    await asyncio.sleep(0)
    assert started == ["first"]
    depth = registry.get_sample_value(
        "sluice_router_queue_depth", {"backend": "b", "priority": "background"}
    )
    assert depth == 1

    clock.advance(2.0)
    release["first"].set()
    await first
    await _settle()
    assert started == ["first", "prem"]  # premium overtook the earlier background
    release["prem"].set()
    await prem
    await _settle()
    assert started == ["first", "prem", "bg"]
    release["bg"].set()
    await bg
    waited = registry.get_sample_value(
        "sluice_router_queue_wait_seconds_count", {"priority": "premium"}
    )
    assert waited == 1
    assert registry.get_sample_value("sluice_router_admitted_in_flight", {"backend": "b"}) == 0


async def test_a_request_that_cannot_start_in_time_is_refused_at_once() -> None:
    clock, load = FakeClock(), _Load()
    admission, registry = _admission(clock, load)
    # One completed stream teaches the gate that service takes ~10 s.
    async with admission.slot("b", "t", "normal", deadline=clock.monotonic() + 60):
        clock.advance(10.0)
    holder, done = await _occupied(admission, clock)
    with pytest.raises(DeadlineExceededError, match="cannot start before its deadline"):
        async with admission.slot("b", "t2", "normal", deadline=clock.monotonic() + 1.0):
            pytest.fail("must not start")
    refused = registry.get_sample_value(
        "sluice_router_admission_refused_total", {"priority": "normal", "reason": "deadline"}
    )
    assert refused == 1
    assert len(admission.gate("b").queue) == 0
    done.set()
    await holder


async def test_a_deadline_passing_in_the_queue_is_deadline_exceeded_and_frees_the_place() -> None:
    clock, load = FakeClock(), _Load()
    admission, registry = _admission(clock, load)
    holder, done = await _occupied(admission, clock)
    # No service time known yet, so the estimate admits it to the queue; the real
    # wait then runs out (a 20 ms budget).
    with pytest.raises(DeadlineExceededError, match="deadline passed while it waited"):
        async with admission.slot("b", "t2", "normal", deadline=clock.monotonic() + 0.02):
            pytest.fail("must not start")
    assert len(admission.gate("b").queue) == 0
    depth = registry.get_sample_value(
        "sluice_router_queue_depth", {"backend": "b", "priority": "normal"}
    )
    assert depth == 0
    done.set()
    await holder
    # The gate is free again.
    async with _holding(admission):
        assert admission.gate("b").in_flight == 1


async def _queued(
    admission: Admission,
    started: list[tuple[str, str]],
    tenant: str,
    klass: PriorityClass,
    deadline: float,
) -> asyncio.Task[None]:
    async def run() -> None:
        async with admission.slot("b", tenant, klass, deadline=deadline):
            started.append((tenant, klass))

    task = asyncio.create_task(run())
    await _settle()
    return task


async def test_under_overload_the_lowest_class_anywhere_waits_and_is_refused_first() -> None:
    clock, load = FakeClock(), _Load()
    admission, registry = _admission(clock, load)
    async with admission.slot("b", "x", "normal", deadline=clock.monotonic() + 60):
        clock.advance(10.0)  # service takes ~10 s
    started: list[tuple[str, str]] = []
    holder, done = await _occupied(admission, clock, tenant="x")
    far = clock.monotonic() + 1000
    # The light tenant's background work queued first; the heavy tenant's normal later.
    light_bg = await _queued(admission, started, "light", "background", far)
    heavy = [await _queued(admission, started, "heavy", "normal", far) for _ in range(2)]
    # With 2 normal + 1 background waiting, ~10 s each: a new background request would
    # start after ~40 s and is refused at once; a heavy normal one after ~30 s is not.
    with pytest.raises(DeadlineExceededError):
        async with admission.slot("b", "light", "background", deadline=clock.monotonic() + 35):
            pytest.fail("must not start")
    heavy.append(await _queued(admission, started, "heavy", "normal", clock.monotonic() + 35))
    refused = registry.get_sample_value(
        "sluice_router_admission_refused_total", {"priority": "background", "reason": "deadline"}
    )
    assert refused == 1
    assert registry.get_sample_value(
        "sluice_router_admission_refused_total", {"priority": "normal", "reason": "deadline"}
    ) in (None, 0)
    done.set()
    await holder
    for task in [*heavy, light_bg]:
        await task
    assert started == [("heavy", "normal")] * 3 + [("light", "background")]


async def test_a_full_queue_sheds_its_lowest_class_for_a_higher_one() -> None:
    clock, load = FakeClock(), _Load()
    admission, registry = _admission(clock, load, max_queue=2)
    started: list[tuple[str, str]] = []
    holder, done = await _occupied(admission, clock, tenant="x")
    far = clock.monotonic() + 1000
    first_bg = await _queued(admission, started, "light", "background", far)
    second_bg = await _queued(admission, started, "light", "background", far)
    # Full. A normal request takes the newest background request's place...
    normal = await _queued(admission, started, "heavy", "normal", far)
    assert second_bg.done()
    with pytest.raises(ServiceUnavailableError, match="sheds background requests first"):
        await second_bg
    # ...while another background request finds nobody below it and is refused itself.
    with pytest.raises(ServiceUnavailableError, match="queue is full"):
        async with admission.slot("b", "light", "background", deadline=far):
            pytest.fail("must not start")
    shed = registry.get_sample_value(
        "sluice_router_admission_refused_total", {"priority": "background", "reason": "shed"}
    )
    assert shed == 1
    depth = registry.get_sample_value(
        "sluice_router_queue_depth", {"backend": "b", "priority": "background"}
    )
    assert depth == 1
    done.set()
    await holder
    await normal
    await first_bg
    assert started == [("heavy", "normal"), ("light", "background")]
    assert len(admission.gate("b").queue) == 0


async def test_a_full_queue_refuses_at_once() -> None:
    clock, load = FakeClock(), _Load()
    admission, _ = _admission(clock, load, max_queue=0)
    async with _holding(admission):
        with pytest.raises(ServiceUnavailableError, match="queue is full"):
            async with _holding(admission):
                pytest.fail("must not start")


@pytest.mark.parametrize(
    ("load_level", "refused"),
    [
        (0.5, set()),
        (0.85, {"background"}),
        (0.95, {"background", "normal"}),
        (0.99, {"background", "normal", "critical", "premium"}),
    ],
)
async def test_shedding_refuses_background_first_and_premium_last(
    load_level: float, refused: set[str]
) -> None:
    clock, load = FakeClock(), _Load()
    admission, registry = _admission(clock, load, limit=10)
    load.memory = load_level
    got = set()
    for klass in ("premium", "critical", "normal", "background"):
        try:
            async with _holding(admission, klass):
                pass
        except ServiceUnavailableError as err:
            assert "sheds" in str(err)
            got.add(klass)
    assert got == refused
    assert registry.get_sample_value("sluice_router_memory_load") == load_level


async def test_cpu_counts_as_load_too() -> None:
    clock, load = FakeClock(), _Load()
    admission, registry = _admission(clock, load, limit=10)
    load.cpu = 0.9
    with pytest.raises(ServiceUnavailableError):
        async with _holding(admission, "background"):
            pass
    assert registry.get_sample_value("sluice_router_cpu_load") == 0.9


async def test_first_tokens_feed_the_adaptive_limit_and_p95() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    settings = AdmissionSettings(
        adaptive=AdaptiveSettings(initial_limit=4, min_limit=1, max_limit=8, target_ttft_ms=500)
    )
    sampler = LoadSampler(clock, 0.0, cpu=lambda: 0.0, memory=lambda: 0.0)
    admission = Admission(settings, clock, registry, sampler)

    async def stream(ttft: float) -> None:
        async with admission.slot("b", "t", "normal", deadline=1e9) as ticket:
            clock.advance(ttft)
            admission.first_token(ticket)
            admission.first_token(ticket)  # only the first counts

    for _ in range(3):
        await stream(2.0)  # slow: 4 -> 3.6 -> 3.24 -> 2.9
    assert registry.get_sample_value("sluice_router_concurrency_limit", {"backend": "b"}) == 2
    assert registry.get_sample_value("sluice_router_ttft_p95_seconds") == 2.0


def test_schedule_windows_cover_their_minutes_and_wrap_midnight() -> None:
    day = ScheduleSettings(start="09:00", end="17:30", max_limit=1)
    night = ScheduleSettings(start="22:00", end="06:00", max_limit=1)
    assert day.active(9 * 60) and day.active(17 * 60 + 29)
    assert not day.active(17 * 60 + 30) and not day.active(8 * 60 + 59)
    assert night.active(23 * 60) and night.active(0) and night.active(5 * 60 + 59)
    assert not night.active(6 * 60) and not night.active(12 * 60)


async def test_time_of_day_schedule_caps_the_limit_while_active() -> None:
    midnight = 1_700_006_400.0  # a UTC midnight
    clock = FakeClock(wall=midnight + 21 * 3600)  # 21:00
    registry = CollectorRegistry()
    settings = AdmissionSettings(
        adaptive=AdaptiveSettings(initial_limit=10, max_limit=10),
        schedules=[
            ScheduleSettings(start="22:00", end="06:00", max_limit=2),
            ScheduleSettings(start="23:00", end="23:30", max_limit=1),
        ],
    )
    sampler = LoadSampler(clock, 0.0, cpu=lambda: 0.0, memory=lambda: 0.0)
    admission = Admission(settings, clock, registry, sampler)
    gate = admission.gate("b")
    assert admission.limit(gate) == 10
    clock.advance(3600)  # 22:00
    assert admission.limit(gate) == 2
    clock.advance(3600 + 60)  # 23:01: both windows, the smallest cap wins
    assert admission.limit(gate) == 1
    clock.advance(8 * 3600)  # 07:01
    assert admission.limit(gate) == 10


async def test_memory_load_is_measured_against_the_configured_limit() -> None:
    # With `resilience.memory_limit_mb` set, memory load is this process's RSS over that
    # limit (a 1 KiB limit: far over 1), not the share of the host's memory in use.
    async def memory_load(limit_bytes: int = 0) -> float:
        registry = CollectorRegistry()
        admission = Admission(
            AdmissionSettings(), FakeClock(), registry, memory_limit_bytes=limit_bytes
        )
        async with admission.slot("b", "t", "normal", deadline=1e9):
            pass
        value = registry.get_sample_value("sluice_router_memory_load")
        assert value is not None
        return value

    assert await memory_load(1024) > 1.0
    assert await memory_load() <= 1.0
