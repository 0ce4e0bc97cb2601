"""Per-key caps (router/stream_caps.py): open streams and a key's own request rate."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from sluice.core.errors import QuotaExceededError
from sluice.router.auth import Principal
from sluice.router.stream_caps import KeyCaps
from tests.support import FakeClock


def principal(key_id: str, cap: int, rpm: int | None = None) -> Principal:
    return Principal(
        key_id, "t", "normal", frozenset({"*"}), max_streams=cap, requests_per_minute=rpm
    )


def test_a_key_at_its_cap_is_refused_until_a_stream_ends() -> None:
    caps = KeyCaps(CollectorRegistry(), FakeClock().monotonic)
    alice, bob = principal("alice", 2), principal("bob", 2)
    first, second = caps.acquire(alice), caps.acquire(alice)
    with pytest.raises(QuotaExceededError) as caught:
        caps.acquire(alice)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.http_status == 429
    assert caught.value.metadata["limit"] == "max_concurrent_streams"
    caps.acquire(bob)  # another key is not affected
    first.release()
    first.release()  # idempotent: does not free a second slot
    assert caps.open_count("alice") == 1
    third = caps.acquire(alice)
    with pytest.raises(QuotaExceededError):
        caps.acquire(alice)
    second.release()
    third.release()
    assert caps.open_count("alice") == 0
    assert caps.refused.labels("streams")._value.get() == 2


def test_a_keys_own_rate_refills_over_time() -> None:
    clock = FakeClock()
    caps = KeyCaps(CollectorRegistry(), clock.monotonic)
    limited = principal("r", 100, rpm=2)
    caps.acquire(limited).release()
    caps.acquire(limited).release()
    with pytest.raises(QuotaExceededError) as caught:
        caps.acquire(limited)
    assert caught.value.metadata["limit"] == "requests_per_minute"
    assert caught.value.retry_after_s == pytest.approx(30.0)
    clock.advance(30)
    caps.acquire(limited).release()
    assert caps.open_count("r") == 0
