"""`python -m sluice.launcher.probe`, the pods' health probe under mutual TLS (the
kubelet's own gRPC probe speaks plaintext only): run as the real command the manifests
name, against a real router serving only mTLS. It answers 0 for SERVING, and 1 when the
part is not reachable, not SERVING, or would have to be asked without a certificate."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from loadtest.chaos import free_ports
from sluice.core.grpcx.certs import write_suite_certs
from sluice.launcher.k8s.workloads import probe_command
from sluice.router.wiring import build_server as build_router
from tests.support import ServiceStack, router_settings


async def _run(command: list[str]) -> int:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert b"Traceback" not in err, err.decode()
    return await process.wait()


def _here(command: list[str], certs: Path) -> list[str]:
    """The manifest's command with this test's interpreter and certificate directory."""
    assert command[0] == "python"
    return [sys.executable, *(arg.replace("/etc/sluice/certs", str(certs)) for arg in command[1:])]


async def test_the_probe_asks_an_mtls_router_with_its_own_certificate(
    stack: ServiceStack, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    write_suite_certs(certs)
    security = {"mtls": True, "certs_dir": str(certs)}
    router = await stack.start(
        build_router(router_settings("127.0.0.1:1", "127.0.0.1:1", security=security))
    )
    whole = _here(probe_command("router", router.port), certs)
    service = _here(probe_command("router", router.port, "sluice.router.v1.RouterService"), certs)
    assert await _run(whole) == 0
    assert await _run(service) == 0
    # An unknown health service is NOT_FOUND, not SERVING.
    assert await _run(_here(probe_command("router", router.port, "nope.Service"), certs)) == 1
    # Nothing listens there.
    (closed,) = free_ports(1)
    assert await _run(_here(probe_command("router", closed), certs)) == 1
    # The server must prove the identity asked for.
    assert await _run([*whole[:-1], "limiter"]) == 1
    # Plaintext against an mTLS-only server fails.
    plain = [sys.executable, "-m", "sluice.launcher.probe", "--port", str(router.port)]
    assert await _run(plain) == 1
    # A missing certificate file is a failed probe with a message, not a crash.
    (certs / "router-key.pem").unlink()
    assert await _run(whole) == 1
