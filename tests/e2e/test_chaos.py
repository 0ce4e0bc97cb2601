"""The shortened chaos run (loadtest/chaos.py) against the real suite.

Ten streams in flight while a provider replica is killed, the limiter frozen, the
primary down and then rate limited: nothing may hang, every stream must end with a
`complete` event, and the breaker must open and close again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.chaos import chaos, parse, running_suite

pytestmark = pytest.mark.e2e


async def test_shortened_chaos_run_completes_every_stream(tmp_path: Path) -> None:
    args = parse(
        ["-c", "10", "--scale", "0.25", "--freeze-s", "1.5", "--outage-s", "2.5",
         "--storm-s", "1.5", "--reset-timeout-s", "1.5", "--deadline-s", "15"]
    )  # fmt: skip
    with running_suite(args, tmp_path) as suite:
        figures = await chaos(args, suite)

    assert figures["hung_streams"] == 0, figures
    assert figures["failures"] == {}, figures
    assert figures["completed_share"] == 1.0
    assert figures["requests"] > 200
    assert figures["replica_restarted"]
    assert figures["suite_alive"]
    steps = figures["served_by_step"]
    assert steps["primary"] > 0.5
    assert steps["secondary"] > 0.0
    primary = [t["state"] for t in figures["breaker_transitions"] if t["backend"] == "primary"]
    assert "open" in primary
    assert primary[-1] == "closed"
    counters = figures["router_counters"]
    opened = 'sluice_router_breaker_transitions_total{backend="primary",state="open"}'
    assert counters[opened] >= 1
    # Back on the primary within the reset timeout (plus the probes' own time).
    back = figures["seconds_back_to_primary_after_outage"]
    assert back is not None
    assert back <= 1.5 + 2.0
    for name in ("kill_replica", "freeze_limiter", "primary_500s", "429_storm"):
        assert figures["phases"][name]["during"]["completed_share"] == 1.0, name
