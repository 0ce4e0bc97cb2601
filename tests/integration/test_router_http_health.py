"""A draining router gets no HTTP traffic from the edge (issue 16, item 8).

Real Envoy in front of a real router: the router's HTTP listener (cluster router_http)
has an active health check (`/healthz`, launcher/envoy/clusters.py). When the router
begins a graceful stop, /healthz answers 503 at once while in-flight streams drain and
the listener stays open; Envoy marks the host unhealthy and answers new HTTP requests
itself (503, no healthy upstream) instead of sending them to the stopping router.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import httpx
import yaml

from loadtest.chaos import free_ports
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.settings import load_suite
from sluice.router.v1 import router_pb2
from tests.e2e.conftest import start_envoy
from tests.support import AUTH, SLOW_BACKEND, ServiceStack, start_suite


async def _get(url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            return (await client.get(url, headers=dict(AUTH))).status_code
        except httpx.TransportError:
            return 0


async def _until(url: str, status: int, within_s: float = 10.0) -> int:
    deadline = time.monotonic() + within_s
    got = 0
    while time.monotonic() < deadline:
        got = await _get(url)
        if got == status:
            break
        await asyncio.sleep(0.1)
    return got


async def test_a_draining_router_is_taken_out_of_http_rotation(
    stack: ServiceStack, tmp_path: Path
) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)
    router = suite.router
    edge, admin = free_ports(2)
    config = tmp_path / "suite.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tracing": {"enabled": False},
                # The in-process suite (tests/support.py) serves plaintext.
                "security": {"mtls": False},
                "router": {
                    "server": {"port": router.port},
                    "http_api": {"port": router.http_port},
                },
                "envoy": {"port": edge, "admin_port": admin, "health_check_interval_ms": 200},
            }
        )
    )
    envoy_file = tmp_path / "envoy.yaml"
    envoy_file.write_text(yaml.safe_dump(render(load_suite(config), descriptor_path())))
    envoy = await asyncio.to_thread(start_envoy, envoy_file, admin)
    models = f"http://127.0.0.1:{edge}/v1/models"
    try:
        assert await _until(models, 200) == 200
        # A stream in flight keeps the router draining (grace 10 s) instead of stopped.
        stream = suite.router_stub.Generate(
            router_pb2.GenerateRequest(
                model="default",
                messages=[{"role": "user", "content": "a long answer please"}],
                max_tokens=2000,
            ),
            metadata=AUTH,
        )
        assert (await stream.read()).HasField("metadata")
        stopping = asyncio.create_task(router.stop(10.0))

        assert await _until(models, 503) == 503
        direct = f"http://127.0.0.1:{router.http_port}"
        assert await _get(f"{direct}/healthz") == 503
        assert await _get(f"{direct}/v1/models") == 200  # still open: Envoy chose not to send
        async with httpx.AsyncClient(timeout=5) as client:
            clusters = (await client.get(f"http://127.0.0.1:{admin}/clusters")).text
        flags = f"router_http::127.0.0.1:{router.http_port}::health_flags::/failed_active_hc"
        assert flags in clusters

        stream.cancel()
        await stopping
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
    assert await stream.code() == grpc.StatusCode.CANCELLED
