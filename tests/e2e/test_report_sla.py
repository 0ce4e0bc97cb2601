"""`sluice report sla` against a real Prometheus scraping a real suite: the figures in the
report are checked against the router's own counters and histogram (read from its
/metrics directly, not through Prometheus), with a known share of failed requests. Envoy
health-checks the router all along (every 200 ms here): the report counts the client
RPCs only, as the SLI says (launcher/sli.py)."""

from __future__ import annotations

import re
import shutil
import subprocess  # nosec B404 - starts Prometheus and the CLI under test
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.launcher import sli
from tests.e2e.conftest import BIN, DEV_KEY, RunningSuite, free_ports, start_suite
from tests.e2e.test_prometheus import query, render_config

pytestmark = pytest.mark.e2e

PROVIDER = {
    "fault_injection": True,
    "backends": {
        "simulated": {"time_to_first_token_ms": 1, "tokens_per_second": 2000, "answer_tokens": 2}
    },
}
# Injected failures must reach the router as failures, not breaker fast-fails.
ROUTER = {"resilience": {"breaker": {"failure_threshold": 100000}}}
# Health checks throughout the window: many more than our requests, none of them counted.
ENVOY = {"health_check_interval_ms": 200}
UNARY = re.compile(r".*/(Generate|Converse)$")
OK_REQUESTS, FAILED_REQUESTS = 40, 10


def _router_counters(suite: RunningSuite) -> tuple[float, float, dict[float, float], float]:
    """Client requests, their server errors, the unary duration buckets (le -> count) and
    the health-check and reflection RPCs, right now."""
    text = httpx.get(suite.metrics_url("router"), timeout=5).text
    total = errors = infrastructure = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("service") != "router":
                continue
            client = sli.is_client_method(labels["method"])
            if sample.name == "sluice_rpc_requests_total" and not client:
                infrastructure += sample.value
            elif sample.name == "sluice_rpc_requests_total":
                total += sample.value
                errors += sample.value if labels["code"] in sli.SERVER_ERROR_CODES else 0.0
            elif (
                sample.name == "sluice_rpc_duration_seconds_bucket"
                and client
                and not UNARY.match(labels["method"])
            ):
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return total, errors, buckets, infrastructure


def _quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus's histogram_quantile over cumulative bucket counts."""
    bounds = sorted(buckets)
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def _send(edge: str, ok: int, failed: int) -> None:
    # Unique prompts: a failed request must not be answered from the response cache.
    tag = time.monotonic_ns()
    with httpx.Client(timeout=10, trust_env=False) as client:
        for number in range(ok + failed):
            headers = {"authorization": f"Bearer {DEV_KEY}"}
            if number < failed:
                headers["x-sluice-fault"] = "error_rate=1"
            body = {
                "model": "default",
                "messages": [{"role": "user", "content": f"{tag}-{number}"}],
            }
            answer = client.post(f"{edge}/v1/complete", json={**body, "max_tokens": 2},
                                 headers=headers)  # fmt: skip
            assert (answer.status_code >= 500) == (number < failed), answer.text


def _settled(base: str, truth: float) -> bool:
    found = query(base, f"sum(sluice_rpc_requests_total{{{sli.ROUTER_RPCS}}})")
    return bool(found) and float(found[0]["value"][1]) >= truth


def _row(markdown: str, name: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n{markdown}")


def _number(cell: str) -> float:
    return float(cell.split(maxsplit=1)[0])


def test_sla_report_matches_the_routers_own_counters(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run `make tools`"
    [web_port] = free_ports(1)
    (tmp_path / "suite").mkdir()
    with start_suite(tmp_path / "suite", provider=PROVIDER, router=ROUTER, envoy=ENVOY) as suite:
        (tmp_path / "prom").mkdir()
        config = render_config(suite.ports, tmp_path / "prom")
        log = (tmp_path / "prometheus.log").open("w")
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{web_port}"
        try:
            # Warm-up: every series the window needs exists and has been scraped.
            _send(suite.edge, 2, 1)
            warm, _, _, _ = _router_counters(suite)
            _wait(lambda: _settled(base, warm), 60, "Prometheus scraping the warm-up", log)
            time.sleep(1.5)  # the before-load values scraped
            start = time.time()
            total_0, errors_0, buckets_0, health_0 = _router_counters(suite)
            _send(suite.edge, OK_REQUESTS, FAILED_REQUESTS)
            total_1, errors_1, buckets_1, _ = _router_counters(suite)
            _wait(lambda: _settled(base, total_1), 30, "Prometheus scraping the load", log)
            time.sleep(1.5)
            end = time.time()
            _, _, _, health_1 = _router_counters(suite)
            run = subprocess.run(
                [str(BIN / "sluice"), "report", "sla", "--prometheus", base,
                 "--since", f"{end - start:.1f}s", "--end", f"{end:.3f}",
                 "--rate-window", "5s", "--cpu-limit", "2", "--memory-limit-mb", "24000",
                 "--output", str(tmp_path / "report")],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
        finally:
            process.terminate()
            process.wait(timeout=20)
            log.close()
    # 10 of 50 failed: the availability target is not met, so the command says so.
    assert run.returncode == 1, run.stdout + run.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Targets: **not met**" in markdown
    total, errors = total_1 - total_0, errors_1 - errors_0
    assert (total, errors) == (OK_REQUESTS + FAILED_REQUESTS, FAILED_REQUESTS)
    # Health checks ran all through the window: counted, they would show in the report's
    # request count and lift its availability.
    assert health_1 - health_0 >= 5
    # No part restarted, so the counts are exact deltas (no extrapolation).
    assert _number(_row(markdown, "Requests (router client RPCs)")[1]) == total
    availability = _row(markdown, "Availability")
    assert availability[3] == "**FAIL**"
    assert _number(availability[1]) == pytest.approx(100 * (1 - errors / total), abs=0.5)
    error_rate = _row(markdown, "Error rate (server errors)")
    assert _number(error_rate[1]) == pytest.approx(100 * errors / total, abs=0.5)
    window = {le: buckets_1[le] - buckets_0.get(le, 0.0) for le in buckets_1}
    p99 = _row(markdown, "Latency p99 (unary answers)")
    assert _number(p99[1]) == pytest.approx(_quantile(0.99, window), rel=0.05, abs=0.002)
    assert p99[3] == "pass"
    for job in ("sluice-router", "sluice-limiter", "sluice-provider", "sluice-telemetry"):
        cpu = _row(markdown, f"CPU peak {job} (% of 2 cores)")
        assert 0 < _number(cpu[1]) < 100 and cpu[3] in ("pass", "**FAIL**")
        memory = _row(markdown, f"Memory peak {job} (% of 24000 MB)")
        assert 0 < _number(memory[1]) < 5 and memory[3] == "pass"
    for chart in ("traffic", "latency", "cpu", "memory"):
        png = tmp_path / "report" / f"{chart}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
        assert f"]({chart}.png)" in markdown


def _wait(check: Any, within_s: float, what: str, log: Any) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass  # Prometheus not listening yet
        if time.monotonic() > deadline:
            log.flush()
            raise AssertionError(f"{what}: not within {within_s}s")
        time.sleep(0.25)
