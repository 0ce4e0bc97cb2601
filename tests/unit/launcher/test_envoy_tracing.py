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


def seconds(duration: str) -> float:
    """A protobuf JSON Duration ("0.25s") in seconds."""
    assert duration.endswith("s"), duration
    return float(duration.removesuffix("s"))


def test_exports_are_retried_on_connect_failure_within_their_timeout(tmp_path: Path) -> None:
    # A batch exported before the telemetry service listens, or while it restarts, is
    # otherwise dropped: Envoy does not retry an export on its own.
    bootstrap = rendered(tmp_path, {"endpoint": "127.0.0.1:14317"})

    grpc_service = connection_manager(bootstrap)["tracing"]["provider"]["typed_config"][
        "grpc_service"
    ]

    policy = grpc_service["retry_policy"]
    assert {"connect-failure", "refused-stream", "unavailable", "reset"} <= set(
        policy["retry_on"].split(",")
    )
    assert policy["num_retries"] >= 3
    back_off = policy["retry_back_off"]
    base, most = seconds(back_off["base_interval"]), seconds(back_off["max_interval"])
    assert 0 < base <= most
    # Envoy waits up to base, 2 x base, ... (capped at max_interval) before each retry, all
    # within the export's one timeout: it must outlast every wait.
    waits = [min(base * 2**retry, most) for retry in range(policy["num_retries"])]
    assert seconds(grpc_service["timeout"]) > sum(waits)


def test_no_tracer_and_no_telemetry_cluster_when_tracing_is_off(tmp_path: Path) -> None:
    bootstrap = rendered(tmp_path, {"enabled": False})

    assert "tracing" not in connection_manager(bootstrap)
    assert TELEMETRY_CLUSTER not in [c["name"] for c in bootstrap["static_resources"]["clusters"]]
