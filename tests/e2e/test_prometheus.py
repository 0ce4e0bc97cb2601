"""A real Prometheus (Debian `prometheus`) scrapes a running suite with deploy/prometheus/."""

from __future__ import annotations

import shutil
import subprocess  # nosec B404 - starts the Prometheus server under test
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sluice.launcher import sli
from tests.e2e.conftest import DEV_KEY, free_ports, start_suite

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
BODY: dict[str, Any] = {
    "model": "default",
    "messages": [{"role": "user", "content": "count me"}],
    "max_tokens": 2,
}


def render_config(ports: dict[str, int], into: Path) -> Path:
    """The project's scrape config with the test's ports and a 1 s scrape interval."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    targets = {
        "sluice-router": ports["router_metrics"],
        "sluice-limiter": ports["limiter_metrics"],
        "sluice-provider": ports["provider_metrics"],
        "sluice-telemetry": ports["telemetry_metrics"],
        "envoy": ports["envoy_admin"],
        "sluice-launcher": ports["supervisor_metrics"],
    }
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    shutil.copytree(DEPLOY / "rules", into / "rules")
    path = into / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(base: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_the_suite_and_sees_the_request_rate(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run `make tools`"
    [web_port] = free_ports(1)
    (tmp_path / "suite").mkdir()
    with start_suite(tmp_path / "suite") as suite:
        (tmp_path / "prom").mkdir()
        config = render_config(suite.ports, tmp_path / "prom")
        log = (tmp_path / "prometheus.log").open("w")
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{web_port}"
        try:
            deadline = time.monotonic() + 60
            up: list[dict[str, Any]] = []
            rate: list[dict[str, Any]] = []
            recorded: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                httpx.post(
                    f"{suite.edge}/v1/complete",
                    json=BODY,
                    headers={"authorization": f"Bearer {DEV_KEY}"},
                    timeout=10,
                ).raise_for_status()
                try:
                    up = query(base, "up == 1")
                    rate = query(
                        base, 'sum(rate(sluice_rpc_requests_total{service="router"}[10s]))'
                    )
                    # A recording rule of the project's rules, evaluated on live series.
                    recorded = query(base, "sluice:rpc_server_errors:ratio_rate5m")
                except httpx.HTTPError:
                    pass  # not listening yet
                if len(up) == 6 and rate and float(rate[0]["value"][1]) > 0 and recorded:
                    break
                time.sleep(0.5)
            assert {series["metric"]["job"] for series in up} == {
                "sluice-router",
                "sluice-limiter",
                "sluice-provider",
                "sluice-telemetry",
                "envoy",
                "sluice-launcher",
            }, (tmp_path / "prometheus.log").read_text()[-3000:]
            assert rate and float(rate[0]["value"][1]) > 0
            rules = httpx.get(f"{base}/api/v1/rules", timeout=5).json()["data"]["groups"]
            assert {group["name"] for group in rules} == {
                "sluice-alerts",
                "sluice-backend-errors",
                "sluice-resilience",
                "sluice-sla-recording",
                "sluice-sla",
                "sluice-runtime",
            }
            assert recorded and float(recorded[0]["value"][1]) == 0.0
            # Envoy health-checks the router: real series the SLI's selector leaves out.
            health = query(
                base,
                f'sum(increase(sluice_rpc_requests_total{{service="router",'
                f'method=~"{sli.INFRASTRUCTURE_METHODS}"}}[1m]))',
            )
            client = query(
                base, f"sum(increase(sluice_rpc_requests_total{{{sli.ROUTER_RPCS}}}[1m]))"
            )
            everything = query(
                base, 'sum(increase(sluice_rpc_requests_total{service="router"}[1m]))'
            )
            assert health and float(health[0]["value"][1]) > 0
            assert client and float(client[0]["value"][1]) > 0
            assert float(client[0]["value"][1]) < float(everything[0]["value"][1])
        finally:
            process.terminate()
            process.wait(timeout=20)
            log.close()
