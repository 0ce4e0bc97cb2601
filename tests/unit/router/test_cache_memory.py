"""The in-memory response cache is bounded by bytes as well as by entries."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest

from sluice.common.v1 import common_pb2
from sluice.router.cache import CachedAnswer, ResponseCache, answer_bytes
from tests.support import FakeClock

MIB = 1024 * 1024


def answer(chars: int) -> CachedAnswer:
    return CachedAnswer("x" * chars, chars // 4, common_pb2.FINISH_REASON_STOP, b"usage")


async def test_big_answers_are_bounded_by_bytes_not_by_the_entry_count() -> None:
    cache = ResponseCache(max_entries=10_000, ttl_s=60.0, clock=FakeClock(), max_bytes=MIB)
    for index in range(100):
        await cache.put(f"k{index}", answer(60_000))
        assert cache.bytes_used <= MIB
    assert 10 <= len(cache) <= 17  # ~60 KB each within 1 MiB, far below 10,000
    assert await cache.get("k99") is not None  # the newest stay
    assert await cache.get("k0") is None


async def test_small_answers_are_still_bounded_by_the_entry_count() -> None:
    cache = ResponseCache(max_entries=5, ttl_s=60.0, clock=FakeClock(), max_bytes=MIB)
    for index in range(20):
        await cache.put(f"k{index}", answer(10))
    assert len(cache) == 5
    assert cache.bytes_used == 5 * answer_bytes("k19", answer(10))


async def test_an_answer_bigger_than_the_whole_bound_is_not_stored() -> None:
    cache = ResponseCache(max_entries=10, ttl_s=60.0, clock=FakeClock(), max_bytes=MIB)
    await cache.put("small", answer(10))
    await cache.put("huge", answer(2 * MIB))
    assert await cache.get("huge") is None
    assert await cache.get("small") is not None


async def test_bound_and_use_are_reported_as_metrics() -> None:
    registry = CollectorRegistry()
    cache = ResponseCache(
        max_entries=10, ttl_s=60.0, clock=FakeClock(), max_bytes=2 * MIB, registry=registry
    )
    await cache.put("a", answer(1_000))
    assert registry.get_sample_value("sluice_router_cache_bound_bytes") == 2 * MIB
    used = registry.get_sample_value("sluice_router_cache_used_bytes")
    assert used == answer_bytes("a", answer(1_000))


async def test_scrapes_from_the_metrics_thread_never_fail_nor_break_a_put() -> None:
    """/metrics is served from its own thread while the event loop writes: a scrape that
    iterated the entries failed (HTTP 500, KeyError) and made a put fail (RuntimeError)."""
    registry = CollectorRegistry()
    cache = ResponseCache(
        max_entries=500, ttl_s=60.0, clock=FakeClock(), max_bytes=MIB, registry=registry
    )
    errors: list[str] = []
    scrapes = 0
    stop = threading.Event()

    def scrape() -> None:
        nonlocal scrapes
        while not stop.is_set():
            try:
                generate_latest(registry)
                scrapes += 1
            except Exception as err:
                errors.append(repr(err))

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        for index in range(20_000):  # evicting all along: 500 entries at most
            await cache.put(f"k{index}", answer(10))
    finally:
        stop.set()
        scraper.join(timeout=10)
    assert errors == []
    assert scrapes > 0
    assert len(cache) == 500
    assert cache.bytes_used == 500 * answer_bytes("k19999", answer(10))
    assert registry.get_sample_value("sluice_router_cache_used_bytes") == cache.bytes_used
