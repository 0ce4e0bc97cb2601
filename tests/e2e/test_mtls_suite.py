"""`sluice up` with `security.mtls`: certificates made on first start, every service
serving only mutual TLS, callers authorized by identity (issue 16 item 1).

Envoy is off here: its upstream TLS (launcher/envoy_tls.py) is tested against a real
Envoy in tests/integration/test_envoy_mtls.py, and `sluice up` refuses mtls with Envoy
until that is wired into the rendered bootstrap.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.core.grpcx.tls import ClientTls, TlsFiles, channel_credentials
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.e2e.conftest import DEV_KEY, start_suite

pytestmark = pytest.mark.e2e


def secure(certs: Path, identity: str, server: str, port: int) -> grpc.aio.Channel:
    files = TlsFiles(certs / "ca.pem", certs / f"{identity}.pem", certs / f"{identity}-key.pem")
    tls = ClientTls(channel_credentials(files), server)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", tls.credentials, options=tls.options)


async def test_sluice_up_makes_certificates_and_serves_only_mtls(tmp_path: Path) -> None:
    with start_suite(tmp_path, security={"mtls": True}, envoy={"enabled": False}) as suite:
        certs = tmp_path / "run" / "certs"
        assert (certs / "ca.pem").is_file() and (certs / "operator-key.pem").is_file()
        assert "mutual TLS    on" in suite.banner
        ports = suite.ports
        auth = (("authorization", f"Bearer {DEV_KEY}"),)

        async with secure(certs, "operator", "router", ports["router"]) as channel:
            listed = await router_pb2_grpc.RouterServiceStub(channel).ListModels(
                router_pb2.ListModelsRequest(), metadata=auth, timeout=10
            )
        assert listed.models

        request = provider_pb2.StreamRequest(
            request_id="r-1",
            backend="simulated",
            messages=[common_pb2.Message(role="user", content="hi")],
        )
        async with secure(certs, "router", "provider", ports["provider"]) as channel:
            stub = provider_pb2_grpc.ProviderServiceStub(channel)
            events = [event async for event in stub.Stream(request, timeout=20)]
        assert events[-1].HasField("end")

        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['provider']}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as plain:
                stub = provider_pb2_grpc.ProviderServiceStub(channel)
                _ = [event async for event in stub.Stream(request, timeout=5)]
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE

        async with secure(certs, "operator", "telemetry", ports["telemetry"]) as channel:
            await telemetry_pb2_grpc.TelemetryServiceStub(channel).GetStats(
                telemetry_pb2.GetStatsRequest(), timeout=10
            )
        async with secure(certs, "provider", "telemetry", ports["telemetry"]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await telemetry_pb2_grpc.TelemetryServiceStub(channel).SearchTraces(
                    telemetry_pb2.SearchTracesRequest(), timeout=10
                )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
