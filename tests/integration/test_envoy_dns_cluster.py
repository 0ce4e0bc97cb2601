"""A real Envoy whose router cluster names its host (`localhost`) instead of an IP, as in
Kubernetes where it is the router's Service: the cluster is STRICT_DNS, Envoy starts,
resolves the name, health-checks the resolved address and streams through it."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import httpx
import yaml

from loadtest.chaos import free_ports
from sluice.common.v1 import common_pb2
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.settings import load_suite
from sluice.router.v1 import router_pb2, router_pb2_grpc
from tests.e2e.conftest import start_envoy
from tests.support import AUTH, Suite, collect, eventually, kinds


async def _router_hosts(admin_port: int) -> dict[str, str]:
    """Host address -> health flags of the router cluster, from Envoy's admin /clusters."""
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            text = (await client.get(f"http://127.0.0.1:{admin_port}/clusters")).text
    except httpx.TransportError:
        return {}
    hosts = {}
    for line in text.splitlines():
        name, _, rest = line.partition("::")
        address, _, field = rest.partition("::")
        if name == "router" and field.startswith("health_flags::"):
            hosts[address] = field.removeprefix("health_flags::")
    return hosts


async def test_envoy_resolves_a_named_router_and_streams_through_it(
    suite: Suite, tmp_path: Path
) -> None:
    edge, admin = free_ports(2)
    config = tmp_path / "suite.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tracing": {"enabled": False},
                # The in-process suite (tests/support.py) serves plaintext.
                "security": {"mtls": False},
                "router": {"server": {"host": "localhost", "port": suite.router.port}},
                "envoy": {"port": edge, "admin_port": admin, "health_check_interval_ms": 200},
            }
        )
    )
    bootstrap = render(load_suite(config), descriptor_path())
    (router,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "router"]
    assert router["type"] == "STRICT_DNS"
    envoy_file = tmp_path / "envoy.yaml"
    envoy_file.write_text(yaml.safe_dump(bootstrap))
    envoy = start_envoy(envoy_file, admin)
    try:
        assert envoy.poll() is None, "Envoy exited: it refused the named cluster"
        resolved = f"127.0.0.1:{suite.router.port}"
        hosts = await eventually(
            lambda: _router_hosts(admin), lambda h: h.get(resolved) == "healthy", within_s=15
        )
        assert hosts == {resolved: "healthy"}  # IPv4 first: not ::1, where nothing listens
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge}") as channel:
            request = router_pb2.GenerateRequest(
                model="default", messages=[common_pb2.Message(role="user", content="hi")]
            )
            call = router_pb2_grpc.RouterServiceStub(channel).Generate(
                request, metadata=AUTH, timeout=10
            )
            events = await collect(call)
        assert kinds(events)[0] == "metadata" and kinds(events)[-1] == "complete"
    finally:
        envoy.send_signal(signal.SIGTERM)
        envoy.wait(timeout=10)
