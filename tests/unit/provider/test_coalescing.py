"""The provider's load signal (CPU wait of its event-loop thread) and the pause it sets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sluice.provider.coalescing import LoadCoalescer, read_run_queue_wait
from sluice.provider.settings import CoalescingSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def coalescer(**fields: object) -> LoadCoalescer:
    """A coalescer whose thread never waits, on a clock that stands still."""
    return LoadCoalescer(
        CoalescingSettings.model_validate(fields),
        CollectorRegistry(),
        waited=lambda: 0.0,
        clock=lambda: 100.0,
    )


async def test_no_pause_below_the_threshold_and_the_full_delay_above_it() -> None:
    load = coalescer(wait_threshold=0.3, max_delay_ms=20)
    await load.start()

    quiet = load.pause()
    load.wait_share = 0.29
    below = load.pause()
    load.wait_share = 0.3
    at = load.pause()

    assert (quiet, below, at) == (0.0, 0.0, 0.02)
    assert load.pauses._value.get() == 1


async def test_disabled_never_pauses() -> None:
    load = coalescer(enabled=False)
    await load.start()
    load.wait_share = 1.0
    assert load.pause() == 0.0


def test_the_share_is_a_clamped_moving_average() -> None:
    load = coalescer()
    load.observe(1.0)
    assert load.wait_share == 0.5
    load.observe(3.0)  # a sample over 1 (clock granularity) counts as fully waiting
    assert load.wait_share == 0.75
    load.observe(-1.0)
    assert load.wait_share == 0.375


async def test_the_share_is_measured_from_the_threads_waiting_time() -> None:
    # A thread that waits 60% of the time for a CPU: coalescing switches on after a few
    # samples, each taken by a stream asking whether to pause.
    clock = FakeClock()
    load = LoadCoalescer(
        CoalescingSettings(sample_interval_ms=100),
        CollectorRegistry(),
        waited=lambda: 0.6 * clock.now,
        clock=clock,
    )
    await load.start()

    pauses = []
    for _ in range(5):
        pauses.append(load.pause())
        clock.now += 0.11
    assert pauses[0] == 0.0  # the first call only takes the first sample
    assert 0.5 < load.wait_share <= 0.6
    assert pauses[-1] == 0.02


async def test_samples_are_taken_at_most_once_per_interval() -> None:
    clock = FakeClock()
    reads = []

    def waited() -> float:
        reads.append(clock.now)
        return 0.0

    load = LoadCoalescer(
        CoalescingSettings(sample_interval_ms=100), CollectorRegistry(), waited=waited, clock=clock
    )
    await load.start()
    reads.clear()  # start() checks the statistics once
    for _ in range(30):  # 30 messages over 150 ms: samples at 0, 100 ms
        load.pause()
        clock.now += 0.005
    assert len(reads) == 2
    # An idle provider takes no samples at all: nothing asks.
    clock.now += 60.0
    assert len(reads) == 2


async def test_a_long_idle_gap_forgets_an_old_load() -> None:
    # Samples are only taken while streams run: the first one after a quiet minute spans
    # it, and must count as the 600 quiet samples it stands for, not as one.
    clock = FakeClock()
    busy = {"waited": 0.0}
    load = LoadCoalescer(
        CoalescingSettings(sample_interval_ms=100),
        CollectorRegistry(),
        waited=lambda: busy["waited"],
        clock=clock,
    )
    await load.start()
    load.pause()
    for _ in range(6):  # 90% waiting for a while: under load
        clock.now += 0.11
        busy["waited"] += 0.9 * 0.11
        load.pause()
    assert load.wait_share > 0.8
    assert load.pause() == 0.02

    clock.now += 60.0  # a quiet minute, nothing waiting
    assert load.pause() == 0.0
    assert load.wait_share < 0.01


async def test_without_scheduler_statistics_coalescing_stays_off() -> None:
    def unreadable() -> float:
        raise FileNotFoundError("/proc/thread-self/schedstat")

    load = LoadCoalescer(CoalescingSettings(), CollectorRegistry(), waited=unreadable)
    await load.start()
    load.wait_share = 1.0
    assert load.pause() == 0.0


def test_this_machine_reports_the_threads_cpu_wait() -> None:
    first = read_run_queue_wait()
    sum(range(100_000))
    assert 0.0 <= first <= read_run_queue_wait()
