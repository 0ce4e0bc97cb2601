"""The provider's load signal (CPU wait of its event-loop thread) and the pause it sets."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from sluice.provider.coalescing import CoalescingSettings, LoadCoalescer, read_run_queue_wait
from tests.support import eventually


def coalescer(**fields: object) -> LoadCoalescer:
    return LoadCoalescer(CoalescingSettings.model_validate(fields), CollectorRegistry())


def test_no_pause_below_the_threshold_and_the_full_delay_above_it() -> None:
    load = coalescer(wait_threshold=0.3, max_delay_ms=20)

    quiet = load.pause()
    load.wait_share = 0.29
    below = load.pause()
    load.wait_share = 0.3
    at = load.pause()

    assert (quiet, below, at) == (0.0, 0.0, 0.02)
    assert load.pauses._value.get() == 1


def test_disabled_never_pauses() -> None:
    load = coalescer(enabled=False)
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
    # A thread that waits 60% of the time for a CPU: coalescing switches on.
    load = LoadCoalescer(
        CoalescingSettings(sample_interval_ms=10),
        CollectorRegistry(),
        waited=lambda: 0.6 * time.monotonic(),
    )
    await load.start()

    async def share_now() -> float:
        return load.wait_share

    try:
        share = await eventually(share_now, lambda v: v > 0.5)
        assert share <= 0.7
        assert load.pause() == 0.02
    finally:
        await load.stop()


async def test_without_scheduler_statistics_coalescing_stays_off() -> None:
    def unreadable() -> float:
        raise FileNotFoundError("/proc/thread-self/schedstat")

    load = LoadCoalescer(CoalescingSettings(), CollectorRegistry(), waited=unreadable)
    await load.start()
    await asyncio.sleep(0)
    assert load._task is None
    assert load.pause() == 0.0
    await load.stop()


def test_this_machine_reports_the_threads_cpu_wait() -> None:
    first = read_run_queue_wait()
    sum(range(100_000))
    assert 0.0 <= first <= read_run_queue_wait()
