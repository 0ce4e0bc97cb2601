"""The shortened soak (loadtest/soak.py): about 60 s of steady mixed load through Envoy
(SSE, gRPC and OpenAI-compatible streams) against the real suite, sampled every 12 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.soak import PARTS, parse, running_suite, soak

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)  # a minute of load plus the suite's start and stop
async def test_shortened_soak_keeps_every_request_and_every_process(tmp_path: Path) -> None:
    args = parse(["--duration", "60", "--interval", "12", "-c", "6", "--quiet"])
    with running_suite(tmp_path) as (edge, run_dir, process):
        figures = await soak(args, edge, run_dir)
        assert process.poll() is None
    assert figures["failed"] == 0, figures["errors"]
    assert figures["availability"] >= 0.999
    assert figures["requests"] > 250, figures
    assert all(figures["by_kind"][kind] > 40 for kind in ("sse", "grpc", "openai")), figures
    assert figures["intervals"] == 6  # one before the load, then every 12 s
    for part in PARTS:
        process_figures = figures["processes"][part]
        assert process_figures["restarts"] == 0, part
        assert process_figures["rss_mb_max"] > 10, part
        assert process_figures["rss_slope_mb_per_hour"] is not None, part
