"""Envoy's own replies, with no healthy router behind it, keep our JSON error shape."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from sluice.core.config import load_settings
from sluice.core.grpcx.certs import write_suite_certs
from sluice.launcher.envoy import descriptor_path, render_yaml
from sluice.launcher.settings import EnvoySettings, SuiteSettings, with_certs_dir
from sluice.limiter.settings import LimiterSettings
from sluice.provider.settings import ProviderSettings
from sluice.router.settings import RouterSettings
from sluice.telemetry.settings import TelemetrySettings
from tests.e2e.conftest import free_ports, start_envoy

pytestmark = pytest.mark.e2e


def test_dead_router_gets_503_json_not_panic_routing(tmp_path: Path) -> None:
    edge, admin, dead = free_ports(3)
    data = {"router": {"server": {"port": dead, "metrics_port": 0}}}
    settings = SuiteSettings(
        router=load_settings(RouterSettings, "router", data=data),
        limiter=load_settings(LimiterSettings, "limiter", data={}),
        provider=load_settings(ProviderSettings, "provider", data={}),
        telemetry=load_settings(TelemetrySettings, "telemetry", data={}),
        envoy=EnvoySettings(port=edge, admin_port=admin, health_check_interval_ms=200),
        config_path=None,
    )
    config = tmp_path / "envoy.yaml"
    write_suite_certs(tmp_path / "certs")  # mtls is the default; Envoy loads its files
    config.write_text(render_yaml(with_certs_dir(settings, tmp_path / "certs"), descriptor_path()))
    envoy = start_envoy(config, admin)
    try:
        time.sleep(0.5)  # a few failed health checks
        response = httpx.post(
            f"http://127.0.0.1:{edge}/v1/complete",
            json={"model": "default", "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        )
        assert response.status_code == 503
        body = response.json()
        assert body["code"] == 14  # UNAVAILABLE
        assert body["details"][0]["reason"] == "SERVICE_UNAVAILABLE"
        assert body["details"][0]["domain"] == "sluice.dev"
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
