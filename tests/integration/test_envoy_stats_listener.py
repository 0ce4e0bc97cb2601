"""Envoy's stats listener (envoy.stats_port), run for real: it answers the admin's
GET /ready and GET /stats/prometheus, which probes and Prometheus use from outside a
pod, and nothing else of the admin interface (no /quitquitquit, /runtime_modify,
/clusters, no POST)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import yaml

from loadtest.chaos import free_ports
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.settings import load_suite
from tests.e2e.conftest import start_envoy


def test_the_stats_listener_serves_ready_and_metrics_only(tmp_path: Path) -> None:
    edge, admin, stats = free_ports(3)
    config = tmp_path / "suite.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tracing": {"enabled": False},
                # No upstream is reached here: plaintext keeps the render free of certificates.
                "security": {"mtls": False},
                "envoy": {"port": edge, "admin_port": admin, "stats_port": stats},
            }
        )
    )
    envoy_file = tmp_path / "envoy.yaml"
    envoy_file.write_text(yaml.safe_dump(render(load_suite(config), descriptor_path())))
    envoy = start_envoy(envoy_file, admin)
    try:
        base = f"http://127.0.0.1:{stats}"
        ready = httpx.get(f"{base}/ready", timeout=5)
        assert (ready.status_code, ready.text.strip()) == (200, "LIVE")
        metrics = httpx.get(f"{base}/stats/prometheus", timeout=5)
        assert metrics.status_code == 200
        assert "envoy_server_live" in metrics.text
        for method, path in [
            ("POST", "/quitquitquit"),
            ("GET", "/quitquitquit"),
            ("POST", "/runtime_modify?a=b"),
            ("GET", "/clusters"),
            ("GET", "/config_dump"),
            ("POST", "/ready"),
            ("POST", "/stats/prometheus"),
            ("GET", "/stats/prometheus/../../quitquitquit"),
        ]:
            answer = httpx.request(method, f"{base}{path}", timeout=5)
            assert answer.status_code == 404, (method, path, answer.status_code)
        # Still running: nothing reached the admin's mutating endpoints.
        assert envoy.poll() is None
        assert httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=5).status_code == 200
    finally:
        envoy.send_signal(signal.SIGTERM)
        envoy.wait(timeout=10)
