"""Envoy -> router over mutual TLS, with real Envoy and a real router (issue 16 item 1).

Envoy's clusters get launcher/envoy/upstream_tls.py's transport socket; the router serves with
`security.mtls` and admits the identity `envoy`. Envoy's gRPC health checks and a client's
call through the edge then both travel over mTLS. An Envoy presenting another identity's
certificate passes health checks (open to any identity the CA vouches for) but its calls
are refused PERMISSION_DENIED.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from loadtest.chaos import free_ports
from sluice.core.config import SecuritySettings
from sluice.core.grpcx.certs import write_suite_certs
from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.tls import TlsFiles
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.envoy.upstream_tls import envoy_tls_files, secure_clusters
from sluice.launcher.settings import load_suite
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.wiring import build_server as build_router
from tests.e2e.conftest import start_envoy
from tests.support import AUTH, ServiceStack, error_info, eventually, router_settings


async def router_health(admin_port: int, router_port: int) -> str:
    """The router host's health flags in Envoy's admin /clusters (the router serves on
    this test's event loop, so nothing here may block it)."""
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            text = (await client.get(f"http://127.0.0.1:{admin_port}/clusters")).text
    except httpx.TransportError:
        return ""
    prefix = f"router::127.0.0.1:{router_port}::health_flags::"
    return next(
        (line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)), ""
    )


def run_envoy(
    tmp_path: Path, router: ServiceHost, files: TlsFiles, name: str
) -> tuple[subprocess.Popen[bytes], int, int]:
    edge, admin = free_ports(2)
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tracing": {"enabled": False},
                "router": {"server": {"port": router.port}},
                "envoy": {"port": edge, "admin_port": admin, "health_check_interval_ms": 200},
                "security": {"certs_dir": str(files.ca.parent)},
            }
        )
    )
    bootstrap = secure_clusters(
        render(load_suite(config), descriptor_path()), files, {"router": "router"}
    )
    envoy_file = tmp_path / f"{name}-envoy.yaml"
    envoy_file.write_text(yaml.safe_dump(bootstrap))
    return start_envoy(envoy_file, admin), edge, admin


async def test_envoy_reaches_the_router_over_mtls_and_a_wrong_identity_does_not(
    stack: ServiceStack, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    write_suite_certs(certs)
    security = {"mtls": True, "certs_dir": str(certs)}
    router = await stack.start(
        build_router(router_settings("127.0.0.1:1", "127.0.0.1:1", security=security))
    )
    good = envoy_tls_files(SecuritySettings(**security))
    # Envoy presenting the provider's certificate: a valid one, the wrong identity.
    wrong = TlsFiles(
        ca=certs / "ca.pem", cert=certs / "provider.pem", key=certs / "provider-key.pem"
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        envoy, edge, admin = run_envoy(tmp_path, router, good, "good")
        processes.append(envoy)
        impostor, wrong_edge, wrong_admin = run_envoy(tmp_path, router, wrong, "wrong")
        processes.append(impostor)

        healthy = await eventually(
            lambda: router_health(admin, router.port), lambda h: h == "healthy", within_s=15
        )
        assert healthy == "healthy"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge}") as channel:
            listed = await router_pb2_grpc.RouterServiceStub(channel).ListModels(
                router_pb2.ListModelsRequest(), metadata=AUTH, timeout=10
            )
        assert [m.id for m in listed.models] == ["default"]

        # Health is open to any identity the CA vouches for; the call itself is not.
        flags = await eventually(
            lambda: router_health(wrong_admin, router.port), lambda h: h == "healthy", within_s=15
        )
        assert flags == "healthy"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{wrong_edge}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await router_pb2_grpc.RouterServiceStub(channel).ListModels(
                    router_pb2.ListModelsRequest(), metadata=AUTH, timeout=10
                )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(caught.value)
        assert (info.reason, info.metadata["identity"]) == ("AUTHORIZATION_ERROR", "provider")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
