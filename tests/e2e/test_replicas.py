"""Two replicas of the router, limiter and provider under steady mixed load through Envoy
(loadtest/replica_kill.py): kill -9 of a provider or a limiter fails nothing; kill -9 of
a router fails at most the streams it was serving, each with an error the client sees
(never a silently truncated stream); every killed replica comes back and serves."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtest.replica_kill import HEALTH, Load, by_kill, kill, steady, tally, wait_back
from tests.e2e.conftest import RunningSuite, free_ports, start_suite

pytestmark = pytest.mark.e2e

EXTRA_PORTS = (
    "router_2", "router_2_metrics", "router_2_http", "limiter_2", "limiter_2_metrics",
    "provider_2", "provider_2_metrics",
)  # fmt: skip
RATE = 25.0
"""New streams a second (SSE, gRPC and OpenAI-compatible in turn), each about 0.9 s long."""


def replica_overrides(extra: dict[str, int]) -> dict[str, dict[str, object]]:
    def server(key: str) -> dict[str, int]:
        return {"port": extra[key], "metrics_port": extra[f"{key}_metrics"]}

    return {
        "supervisor": {
            "replicas": {"router": 2, "limiter": 2, "provider": 2},
            "replica_ports": {
                "router": [{**server("router_2"), "http_port": extra["router_2_http"]}],
                "limiter": [server("limiter_2")],
                "provider": [server("provider_2")],
            },
        },
        # Every trace would cost more CPU than the load itself on a shared machine.
        "tracing": {"sample_ratio": 0.01},
    }


async def serving(suite: RunningSuite, key: str, role: str) -> bool:
    async with suite.channel(key) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH[role]), timeout=0.5
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def envoy_clusters(suite: RunningSuite) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        admin = f"http://127.0.0.1:{suite.ports['envoy_admin']}"
        return (await client.get(f"{admin}/clusters")).text


def store_keys(port: int) -> int:
    """DBSIZE of the shared store."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        connection.sendall(b"DBSIZE\r\n")
        reply = connection.recv(64)
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


async def failovers(suite: RunningSuite) -> float:
    """Mid-stream failovers counted by both routers."""
    total = 0.0
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        for key in ("router", "router_2"):
            text = (await client.get(suite.metrics_url(key))).text
            total += sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("sluice_router_midstream_failovers_total{")
            )
    return total


async def kills_under_load(suite: RunningSuite, run_dir: Path) -> dict[str, Any]:
    load = Load()
    sender = asyncio.create_task(steady(load, suite.edge, RATE))
    await asyncio.sleep(3.0)
    waiting = []
    failed_over = 0.0
    for part, key in (
        ("provider", "provider"),
        ("limiter-2", "limiter_2"),
        ("router-2", "router_2"),
    ):
        role = part.split("-")[0]
        address = suite.grpc(key)

        async def back(key: str = key, role: str = role, address: str = address) -> bool:
            if not await serving(suite, key, role):
                return False
            # A router serves again once Envoy's health check sends it traffic.
            healthy = f"router::{address}::health_flags::healthy"
            return role != "router" or healthy in await envoy_clusters(suite)

        metrics = suite.metrics_url(key) if role == "router" else None
        victim = await kill(load, run_dir, part, metrics)
        waiting.append(asyncio.create_task(wait_back(victim, run_dir, back, timeout_s=60)))
        await asyncio.sleep(3.0)
        if part == "provider":
            # Its streams broke after their first tokens and went on elsewhere.
            failed_over = await failovers(suite)
    kills = list(await asyncio.gather(*waiting))
    all_back = time.monotonic()
    await asyncio.sleep(3.0)
    load.stop = True
    await sender
    router = next(k for k in kills if k.part == "router-2")
    in_flight_failures = [
        s for s in load.streams if s.outcome != "complete" and s.ended > router.killed_at
    ]
    return {
        **by_kill(load, kills),
        "after_all_back": tally([s for s in load.streams if s.started >= all_back]),
        "all": tally(load.streams),
        "provider_streams_failed_over": failed_over,
        "router_failures_started_after_kill": sum(
            s.started > router.killed_at for s in in_flight_failures
        ),
        "clusters": await envoy_clusters(suite),
    }


@pytest.mark.timeout(240)  # nine processes start, three come back, all stop: ~70 s here
async def test_kill_9_of_one_replica_of_each_part_under_steady_load(tmp_path: Path) -> None:
    extra = dict(zip(EXTRA_PORTS, free_ports(len(EXTRA_PORTS)), strict=True))
    # Nine processes start on a machine that may be busy: more time than one suite needs.
    with start_suite(tmp_path, startup_timeout_s=120, **replica_overrides(extra)) as suite:
        suite.ports.update(extra)
        banner = suite.banner
        for name in ("router-2", "limiter-2", "provider-2"):
            assert f"  {name} " in banner, banner
        assert f"http http://127.0.0.1:{extra['router_2_http']}" in banner
        store_line = next(line for line in banner.splitlines() if "shared store" in line)
        store_port = int(store_line.split("redis://127.0.0.1:", 1)[1].split("/", 1)[0])

        figures = await kills_under_load(suite, tmp_path / "run")
        clusters = str(figures.pop("clusters"))
        print("\nkill -9 under load:", json.dumps(figures, indent=2))

        provider, limiter, router = figures["provider"], figures["limiter-2"], figures["router-2"]
        # A provider's in-flight streams continue on the other replica; admission falls
        # over to the other limiter.
        assert provider["failures"] == {} and provider["requests"] > 30, provider
        assert figures["provider_streams_failed_over"] > 0, figures
        assert limiter["failures"] == {} and limiter["requests"] > 30, limiter
        # A router's kill fails at most the streams it held, each visibly.
        assert router["truncated"] == 0, router
        assert (
            router["error"] <= router["victim_streams_in_flight"] + router["started_since_reading"]
        )
        assert figures["router_failures_started_after_kill"] == 0, figures
        # Not one silent truncation anywhere, and everything served once all were back.
        assert figures["all"]["truncated"] == 0, figures
        after = figures["after_all_back"]
        assert after["failures"] == {} and after["requests"] > 20, after
        for part in (provider, limiter, router):
            assert part["back_serving_s"] is not None

        # Envoy balanced over both routers; both limiters counted in the shared store.
        for key in ("router", "router_2"):
            line = f"router::{suite.grpc(key)}::rq_success::"
            successes = int(clusters.split(line, 1)[1].split("\n", 1)[0])
            assert successes > 20, (key, successes)
        assert store_keys(store_port) > 0
        assert suite.process.poll() is None, suite.logs()
