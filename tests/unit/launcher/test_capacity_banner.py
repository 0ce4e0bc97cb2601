"""The banner says what one router holds and why (launcher/capacity.py)."""

from __future__ import annotations

from sluice.launcher.capacity import capacity_lines
from sluice.launcher.settings import load_suite


def test_the_default_ceiling_comes_from_the_memory_budget() -> None:
    first, second = capacity_lines(load_suite(data={}))
    assert "5,461 streams per back end (512 MiB budget / 96 KiB per stream)" in first
    assert "starts at 64" in second
    assert "Envoy admits 10,000" in second


def test_the_banner_follows_the_settings() -> None:
    data = {
        "router": {"admission": {"adaptive": {"memory_budget_mb": 256, "stream_memory_kb": 128}}},
        "envoy": {"circuit_breakers": {"max_requests": 3000}},
    }
    first, second = capacity_lines(load_suite(data=data))
    assert "2,048 streams per back end (256 MiB budget / 128 KiB per stream)" in first
    assert "Envoy admits 3,000" in second
    capped = load_suite(data={"router": {"admission": {"adaptive": {"max_limit": 300}}}})
    assert (
        "300 streams per back end (router.admission.adaptive.max_limit)"
        in (capacity_lines(capped)[0])
    )
    off = load_suite(
        data={"router": {"admission": {"enabled": False}}, "envoy": {"enabled": False}}
    )
    assert capacity_lines(off) == [
        "  capacity      one router holds up to 10,000 streams per back end "
        "(router.resilience.bulkhead.max_concurrent; admission off)"
    ]
