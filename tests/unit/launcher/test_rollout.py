# ruff: noqa: E501  (the Prometheus exposition sample keeps its lines whole)
"""Rollout pieces without processes: the canary gates, Envoy's endpoints files and
bootstrap changes, the webhook payload, the settings' validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.core.config import ConfigError
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.envoy.pools import Endpoint, endpoints_path, pooled, write_endpoints
from sluice.launcher.rollout.controller import DEV_KEY, RolloutError
from sluice.launcher.rollout.gates import (
    PROMQL,
    Figures,
    evaluate,
    failed,
    parse_figures,
    promql,
    quantile,
)
from sluice.launcher.rollout.notify import Decision, alertmanager_payload
from sluice.launcher.rollout.settings import RolloutSettings
from sluice.launcher.settings import load_suite
from sluice.launcher.supervisor import Suite

METRICS = """\
# TYPE sluice_rpc_requests_total counter
sluice_rpc_requests_total{code="OK",method="/sluice.router.v1.RouterService/Generate",pool="green",service="router"} 90.0
sluice_rpc_requests_total{code="UNAVAILABLE",method="/sluice.router.v1.RouterService/Generate",pool="green",service="router"} 10.0
sluice_rpc_requests_total{code="OK",method="/grpc.health.v1.Health/Check",pool="green",service="router"} 500.0
# TYPE sluice_rpc_duration_seconds histogram
sluice_rpc_duration_seconds_bucket{le="0.1",method="/sluice.router.v1.RouterService/Generate",service="router"} 50.0
sluice_rpc_duration_seconds_bucket{le="1.0",method="/sluice.router.v1.RouterService/Generate",service="router"} 100.0
sluice_rpc_duration_seconds_bucket{le="+Inf",method="/sluice.router.v1.RouterService/Generate",service="router"} 100.0
sluice_rpc_duration_seconds_count{method="/sluice.router.v1.RouterService/Generate",service="router"} 100.0
sluice_rpc_duration_seconds_sum{method="/sluice.router.v1.RouterService/Generate",service="router"} 30.0
# TYPE sluice_router_backend_attempts_total counter
sluice_router_backend_attempts_total{backend="simulated"} 110.0
# TYPE sluice_router_backend_errors_total counter
sluice_router_backend_errors_total{backend="simulated",reason="SERVICE_UNAVAILABLE"} 11.0
"""


def test_figures_leave_health_checks_out() -> None:
    figures = parse_figures(METRICS)
    assert (figures.requests, figures.ok, figures.server_errors) == (100, 90, 10)
    assert (figures.attempts, figures.backend_errors) == (110, 11)
    assert figures.latency == {0.1: 50, 1.0: 100, float("inf"): 100}


def test_quantile_interpolates_like_prometheus() -> None:
    assert quantile(0.5, {0.1: 50, 1.0: 100, float("inf"): 100}) == pytest.approx(0.1)
    assert quantile(0.99, {0.1: 50, 1.0: 100, float("inf"): 100}) == pytest.approx(0.982)
    assert quantile(0.99, {0.1: 0, 1.0: 10, float("inf"): 20}) == 1.0  # in +Inf: top bound
    assert quantile(0.99, {}) is None


def test_a_failing_candidate_crosses_the_error_gates() -> None:
    settings = RolloutSettings()
    candidate = parse_figures(METRICS)
    baseline = Figures(requests=1000, ok=1000, attempts=1000, latency={1.0: 1000})
    crossed = {result.gate for result in failed(evaluate(candidate, baseline, settings))}
    assert crossed == {"error_rate", "upstream_error_rate", "success_rate"}


def test_a_healthy_candidate_passes_and_a_slow_one_does_not() -> None:
    settings = RolloutSettings(max_latency_p99_ratio=1.5, latency_slack_ms=0)
    baseline = Figures(requests=100, ok=100, attempts=100, latency={0.5: 100, 1.0: 100})
    same = Figures(requests=10, ok=10, attempts=10, latency={0.5: 10, 1.0: 10})
    assert failed(evaluate(same, baseline, settings)) == []
    slow = Figures(requests=10, ok=10, attempts=10, latency={0.5: 0, 1.0: 10})
    assert [r.gate for r in failed(evaluate(slow, baseline, settings))] == ["latency_p99"]


def test_restarted_replicas_count_from_zero() -> None:
    start = Figures(requests=100, ok=100)
    assert Figures(requests=5, ok=5).since(start).requests == 5
    assert Figures(requests=130, ok=120).since(start).ok == 20


def test_promql_selects_the_candidate_and_everything_else() -> None:
    assert set(PROMQL) == {
        "error_rate", "upstream_error_rate", "success_rate", "latency_p99", "ttft_p99",
    }  # fmt: skip
    query = promql("error_rate", "green", "1m")
    assert 'pool="green"' in query and "[1m]" in query and "$" not in query
    assert 'pool!="green"' in promql("ttft_p99", "green", "5m", baseline=True)


def test_endpoints_file_weights_pins_and_drains(tmp_path: Path) -> None:
    endpoints = [
        Endpoint("127.0.0.1", 1001, 2001, "blue", 0.95, 2),
        Endpoint("127.0.0.1", 1002, 2002, "blue", 0.95, 2, draining=True),
        Endpoint("127.0.0.1", 1003, 2003, "green", 0.05, 1),
        Endpoint("127.0.0.1", 1004, None, "green", 0.0, 1),
    ]
    write_endpoints(tmp_path, endpoints, 3)
    grpc = json.loads(endpoints_path(tmp_path, "router").read_text())
    hosts = grpc["resources"][0]["endpoints"][0]["lb_endpoints"]
    assert [h["load_balancing_weight"] for h in hosts] == [475, 475, 50, 1]
    assert [h["health_status"] for h in hosts] == ["HEALTHY", "DRAINING", "HEALTHY", "HEALTHY"]
    lb = [h["metadata"]["filter_metadata"]["envoy.lb"] for h in hosts]
    assert [m["live"] for m in lb] == ["true", "false", "true", "false"]
    http = json.loads(endpoints_path(tmp_path, "router_http").read_text())
    ports = [
        h["endpoint"]["address"]["socket_address"]["port_value"]
        for h in http["resources"][0]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [2001, 2002, 2003]
    assert not list(tmp_path.glob(".*.tmp"))


def test_pooled_bootstrap_reads_router_endpoints_from_files(tmp_path: Path) -> None:
    plaintext = {"security": {"mtls": False}}  # this checks the endpoint files, not TLS
    bootstrap = pooled(render(load_suite(data=plaintext), descriptor_path()), tmp_path)
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    router = clusters["router"]
    assert router["type"] == "EDS" and "load_assignment" not in router
    source = router["eds_cluster_config"]["eds_config"]["path_config_source"]
    assert source["watched_directory"]["path"] == str(tmp_path.resolve())
    assert router["health_checks"], "the active health check stays"
    assert clusters["router_http"]["type"] == "EDS"
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    names = [f["name"] for f in hcm["typed_config"]["http_filters"]]
    assert names[-2:] == ["envoy.filters.http.header_to_metadata", "envoy.filters.http.router"]
    assert bootstrap["node"]["id"]


def test_webhook_payload_is_alertmanagers() -> None:
    decision = Decision("rolled_back", "canary", "v2", "error_rate 0.05 > 0.01", "error_rate")
    payload = alertmanager_payload(decision, "http://sluice")
    assert payload["version"] == "4" and payload["status"] == "firing"
    alerts = payload["alerts"]
    assert isinstance(alerts, list) and len(alerts) == 1
    alert = alerts[0]
    assert alert["labels"]["severity"] == "page" and alert["labels"]["reason"] == "error_rate"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["fingerprint"]
    step = alertmanager_payload(Decision("step", "canary", "v2", "5 %"), "http://sluice")
    assert step["commonLabels"]["severity"] == "info"  # type: ignore[index]


@pytest.mark.parametrize(
    ("steps", "words"),
    [([5, 25, 50], "last step"), ([50, 25, 100], "increase"), ([0, 100], "1..100")],
)
def test_bad_steps_are_named(steps: list[int], words: str) -> None:
    with pytest.raises(ConfigError, match=rf"rollout.*{words}"):
        load_suite(data={"rollout": {"steps": steps}})


def test_the_smoke_key_is_the_development_key_only_in_dev_mode(tmp_path: Path) -> None:
    # The default router.api_keys lists the development key in both suites.
    dev = Suite(load_suite(data={"router": {"dev_mode": True}}), run_dir=tmp_path / "dev")
    assert dev.rollouts.smoke_key() == DEV_KEY
    prod = Suite(load_suite(data={"router": {"dev_mode": False}}), run_dir=tmp_path / "prod")
    with pytest.raises(
        RolloutError, match=r"rollout\.smoke_api_key_file.*sluice keys create"
    ) as err:
        prod.rollouts.smoke_key()
    assert err.value.reason == "SMOKE_KEY"


def test_a_smoke_key_file_is_used_in_or_out_of_dev_mode(tmp_path: Path) -> None:
    key_file = tmp_path / "smoke.key"
    key_file.write_text("sk-made-by-sluice-keys\n")
    for dev_mode in (False, True):
        settings = load_suite(
            data={
                "router": {"dev_mode": dev_mode},
                "rollout": {"smoke_api_key_file": str(key_file)},
            }
        )
        assert Suite(settings, run_dir=tmp_path).rollouts.smoke_key() == "sk-made-by-sluice-keys"
    missing = load_suite(data={"rollout": {"smoke_api_key_file": str(tmp_path / "none")}})
    with pytest.raises(RolloutError, match=r"rollout\.smoke_api_key_file: .*No such file") as err:
        Suite(missing, run_dir=tmp_path).rollouts.smoke_key()
    assert err.value.reason == "SMOKE_KEY"


def test_a_rollout_without_a_usable_smoke_key_starts_nothing(tmp_path: Path) -> None:
    suite = Suite(load_suite(data={"router": {"dev_mode": False}}), run_dir=tmp_path)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text("router: {dev_mode: false}\n")
    with pytest.raises(RolloutError, match="smoke_api_key_file") as err:
        suite.rollouts.start("canary", str(candidate), None, "v2")
    assert err.value.reason == "SMOKE_KEY"
    assert suite.rollouts.run is None and suite.rollouts.candidate is None
    assert suite.rollouts.pools == {} and suite.parts == []
