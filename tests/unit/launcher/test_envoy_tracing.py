"""Envoy's tracer follows the suite's tracing settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sluice.launcher.envoy import TELEMETRY_CLUSTER
from tests.unit.launcher.envoy_bootstrap import connection_manager, render_suite


def rendered(tmp_path: Path, tracing: dict[str, Any]) -> dict[str, Any]:
    return render_suite(tmp_path, {"tracing": tracing})


def test_tracer_exports_to_the_telemetry_endpoint_at_the_head_ratio(tmp_path: Path) -> None:
    bootstrap = rendered(tmp_path, {"endpoint": "127.0.0.1:14317", "sample_ratio": 0.25})

    tracing = connection_manager(bootstrap)["tracing"]

    assert tracing["random_sampling"] == {"value": 25.0}
    provider = tracing["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"] == {
        "cluster_name": TELEMETRY_CLUSTER
    }
    assert provider["typed_config"]["service_name"] == "sluice-envoy"
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    endpoint = clusters[TELEMETRY_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 14317,
    }
    assert "http2_protocol_options" in str(clusters[TELEMETRY_CLUSTER])


def test_no_tracer_and_no_telemetry_cluster_when_tracing_is_off(tmp_path: Path) -> None:
    bootstrap = rendered(tmp_path, {"enabled": False})

    assert "tracing" not in connection_manager(bootstrap)
    assert TELEMETRY_CLUSTER not in [c["name"] for c in bootstrap["static_resources"]["clusters"]]
