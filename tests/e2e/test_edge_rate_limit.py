"""Edge rate limits through real Envoy asking the limiter's RateLimitService (RLS)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from sluice.core.config import load_settings
from sluice.core.grpcx.certs import write_suite_certs
from sluice.launcher.envoy import descriptor_path, render_yaml
from sluice.launcher.settings import EnvoySettings, SuiteSettings, with_certs_dir
from sluice.limiter.settings import LimiterSettings
from sluice.provider.settings import ProviderSettings
from sluice.router.settings import RouterSettings
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.telemetry.settings import TelemetrySettings
from tests.e2e.conftest import DEV_KEY, RunningSuite, free_ports, start_envoy, start_suite

pytestmark = pytest.mark.e2e

PER_KEY = 3
GLOBAL = 8
# Token buckets that refill once per ~hour: counts are exact for the test's duration.
SLOW = 1 / 3600


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    edge = {
        "policies": [
            {"name": "edge_all", "scope": "global", "limit": GLOBAL, "refill_per_second": SLOW},
            {"name": "edge_key", "scope": "api_key", "limit": PER_KEY, "refill_per_second": SLOW},
            {
                "name": "edge_health",
                "scope": "endpoint",
                "match": {"endpoint": ["grpc.health.v1.Health"]},
                "limit": 1000,
                "refill_per_second": SLOW,
            },
        ]
    }
    with start_suite(tmp_path_factory.mktemp("edge"), limiter={"edge": edge}) as running:
        yield running


def _models(suite: RunningSuite, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{suite.edge}/v1/models", headers=headers, timeout=10)


def test_edge_limits_by_key_then_globally_for_keyless_requests(limited: RunningSuite) -> None:
    key = {"x-api-key": DEV_KEY}
    # Within the per-key limit: served, and Envoy reports what is left.
    for sent in range(PER_KEY):
        ok = _models(limited, key)
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-remaining"] == str(PER_KEY - sent - 1)
        assert ok.headers["x-ratelimit-limit"].startswith(f"{PER_KEY}")

    # Over it: 429, x-ratelimit headers, retry-after, our JSON error body.
    refused = _models(limited, key)
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit"].startswith(f"{PER_KEY}")
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert int(refused.headers["x-ratelimit-reset"]) > 0
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["x-sluice-policy"] == "edge_key"
    body = refused.json()
    assert body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert body["details"][0]["reason"] == "QUOTA_EXCEEDED"
    assert "policy edge_key" in body["message"]

    # The same key as a Bearer token is the same subject.
    bearer = _models(limited, {"authorization": f"Bearer {DEV_KEY}"})
    assert bearer.status_code == 429

    # Native gRPC through Envoy: RESOURCE_EXHAUSTED, not UNAVAILABLE.
    with grpc.insecure_channel(f"127.0.0.1:{limited.ports['envoy']}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListModels(
                router_pb2.ListModelsRequest(), metadata=[("x-api-key", DEV_KEY)], timeout=10
            )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Requests without a key are not let through unlimited: the global rule holds them.
    # (Refused requests consume nothing, so PER_KEY of GLOBAL are used so far.)
    passed = 0
    statuses = []
    for _ in range(GLOBAL):
        response = _models(limited, {})
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["x-sluice-policy"] == "edge_all"
            break
        assert response.status_code == 401  # passed the edge; the router wants a key
        passed += 1
    assert statuses[-1] == 429, statuses
    assert passed == GLOBAL - PER_KEY

    # With the global limit spent, a different key is refused too.
    other = _models(limited, {"x-api-key": "sk-some-other-key"})
    assert other.status_code == 429
    assert other.headers["x-sluice-policy"] == "edge_all"

    stats = httpx.get(f"http://127.0.0.1:{limited.ports['envoy_admin']}/stats", timeout=5).text
    assert _ratelimit_counter(stats, "over_limit") >= 4
    assert _ratelimit_counter(stats, "ok") >= GLOBAL


def _ratelimit_counter(stats: str, name: str) -> int:
    """An Envoy rate-limit counter summed over upstream clusters (HTTP routes and gRPC
    routes reach the router through different clusters)."""
    total = 0
    for line in stats.splitlines():
        key, _, value = line.partition(": ")
        if key.startswith("cluster.") and key.endswith(f".ratelimit.{name}"):
            total += int(value)
    return total


def _render(tmp_path: Path, *, deny: bool) -> tuple[subprocess.Popen[bytes], int, int]:
    edge, admin, dead_router, dead_http, dead_limiter = free_ports(5)
    # Every upstream dead (also the HTTP listener: its default port may be another suite's).
    dead = {"server": {"port": dead_router}, "http_api": {"port": dead_http}}
    settings = SuiteSettings(
        router=load_settings(RouterSettings, "router", data={"router": dead}),
        limiter=load_settings(
            LimiterSettings, "limiter", data={"limiter": {"server": {"port": dead_limiter}}}
        ),
        provider=load_settings(ProviderSettings, "provider", data={}),
        telemetry=load_settings(TelemetrySettings, "telemetry", data={}),
        envoy=EnvoySettings(
            port=edge,
            admin_port=admin,
            health_check_interval_ms=200,
            rate_limit={"enabled": True, "failure_mode_deny": deny},
        ),
        config_path=None,
    )
    write_suite_certs(tmp_path / "certs")  # mtls is the default; Envoy loads its files
    config = tmp_path / "envoy.yaml"
    config.write_text(render_yaml(with_certs_dir(settings, tmp_path / "certs"), descriptor_path()))
    return start_envoy(config, admin), edge, admin


@pytest.mark.parametrize("deny", [False, True])
def test_limiter_down_lets_requests_pass_unless_failure_mode_deny(
    tmp_path: Path, deny: bool
) -> None:
    envoy, edge, admin = _render(tmp_path, deny=deny)
    try:
        response = httpx.get(
            f"http://127.0.0.1:{edge}/v1/models", headers={"x-api-key": "k"}, timeout=10
        )
        stats = httpx.get(f"http://127.0.0.1:{admin}/stats", timeout=5).text
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
    if deny:
        # Refused by the rate limit filter itself; it never reached the (dead) router.
        assert response.status_code == 500, response.text
        assert response.json()["details"][0]["reason"] == "INTERNAL"
        assert _ratelimit_counter(stats, "error") >= 1
    else:
        # Passed the filter; the dead router behind it answers 503.
        assert response.status_code == 503, response.text
        assert _ratelimit_counter(stats, "failure_mode_allowed") == 1


def test_a_spent_budget_is_412_json_through_envoy(tmp_path: Path) -> None:
    budgets = {"prices": {"default": {"output_per_million": 1_000_000}}, "default": 0.5}
    body = {"model": "default", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    with start_suite(tmp_path, router={"budgets": budgets}) as suite:
        first = httpx.post(
            f"{suite.edge}/v1/complete", json=body, headers={"x-api-key": DEV_KEY}, timeout=30
        )
        assert first.status_code == 200, first.text
        spent = httpx.post(
            f"{suite.edge}/v1/complete", json=body, headers={"x-api-key": DEV_KEY}, timeout=30
        )
    assert spent.status_code == 412, spent.text
    error = spent.json()
    assert error["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    [info] = [d for d in error["details"] if d["@type"].endswith("ErrorInfo")]
    assert info["reason"] == "BUSINESS_RULE_VIOLATION"
    assert info["metadata"]["budget"] == "0.5"
