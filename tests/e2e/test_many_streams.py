"""The shortened many-streams run (loadtest/many_streams.py): 100 concurrent streams
(answers of 3 s on average) through Envoy against the real suite, each replaced when it
ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.many_streams import PARTS, PORTS, measure, parse, running_suite, suite_config
from sluice.launcher.settings import load_suite

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(240)  # the suite's start (slow on a loaded machine), ~10 s of streams
def test_a_hundred_concurrent_streams_all_complete_without_refusals(tmp_path: Path) -> None:
    args = parse(["--streams", "100", "--answer-s", "3", "--ramp-s", "1", "--hold-s", "6"])
    with running_suite(tmp_path, args) as (ports, run_dir, process):
        figures = measure(args, ports, run_dir, process.pid)
        assert process.poll() is None
    assert figures["errors"] == {}, figures
    # Each of the 100 slots opened its first stream in the ramp and at least one more after.
    assert figures["started"] == figures["completed"] >= 200, figures
    assert figures["ttft_during_ramp"]["n"] == 100, figures
    assert figures["ttft_after_ramp"]["n"] >= 100, figures
    assert figures["ttft_after_ramp"]["p99_ms"] is not None
    # Answers last their 1.5-4.5 s (30-90 tokens at 20/s), not cut short.
    assert 1500 <= figures["stream_seconds"]["p50_ms"] <= 6000, figures
    # No circuit breaker of Envoy tripped and the adaptive limit grew above its start (64).
    assert not any("overflow" in name for name in figures["envoy_router_cluster"]), figures
    limit = figures["router_adaptive"]['sluice_router_concurrency_limit{backend="simulated"}']
    assert limit > 64, figures
    for part in (*PARTS, "supervisor"):
        assert figures["rss_peak_mb"][part] > 10, part
    peaks = figures["rss_peak_mb"].values()
    assert max(peaks) < figures["suite_rss_peak_mb"] <= sum(peaks) + 1, figures


def test_the_run_config_lets_one_key_hold_every_stream() -> None:
    """All streams share the development key: its stream cap (256 by default) must not
    be what a 2,000- or 5,000-stream run measures (it once refused 64,028 of them)."""
    args = parse(["--streams", "5000"])
    ports = {name: 20000 + i for i, name in enumerate(PORTS)}
    suite = load_suite(data=suite_config(ports, args))
    assert suite.router.streams.max_concurrent_streams >= 5000
    assert suite.router.dev_mode
