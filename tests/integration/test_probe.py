"""`sluice probe PART`, the pods' health probe under mutual TLS (the kubelet's own gRPC
probe speaks plaintext only): run as the real command against a real router serving
only mTLS. It answers 0 for SERVING, and 1 when the part is not reachable or when it
would have to talk to it without its certificate."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import yaml

from loadtest.chaos import free_ports
from sluice.core.grpcx.certs import write_suite_certs
from sluice.router.wiring import build_server as build_router
from tests.support import ServiceStack, router_settings

SLUICE = Path(sys.executable).parent / "sluice"


async def _probe(tmp_path: Path, name: str, suite: dict[str, Any], *args: str) -> int:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(suite))
    process = await asyncio.create_subprocess_exec(
        str(SLUICE), "probe", "router", "--config", str(config), *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await asyncio.wait_for(process.wait(), timeout=30)


async def test_probe_asks_an_mtls_router_with_its_own_certificate(
    stack: ServiceStack, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    write_suite_certs(certs)
    security = {"mtls": True, "certs_dir": str(certs)}
    router = await stack.start(
        build_router(router_settings("127.0.0.1:1", "127.0.0.1:1", security=security))
    )
    suite = {"security": security, "router": {"server": {"port": router.port}}}
    assert await _probe(tmp_path, "whole", suite) == 0
    service = "sluice.router.v1.RouterService"
    assert await _probe(tmp_path, "service", suite, "--service", service) == 0
    # Unknown health service: NOT_FOUND, not SERVING.
    assert await _probe(tmp_path, "unknown", suite, "--service", "nope.Service") == 1
    # Nothing listens there.
    (closed,) = free_ports(1)
    moved = {**suite, "router": {"server": {"port": closed}}}
    assert await _probe(tmp_path, "closed", moved) == 1
    # Without mtls the probe speaks plaintext, which the router refuses.
    assert await _probe(tmp_path, "plain", {"router": {"server": {"port": router.port}}}) == 1
