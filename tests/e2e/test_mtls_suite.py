"""`sluice up` as it starts by default (mutual TLS on, nothing configured): certificates
made on first start, every service serving only mutual TLS, callers authorized by
identity (issue 16 item 1), Envoy reaching the router, the limiter's rate limit service
and telemetry over mTLS, expired certificates refused and rotated ones served without a
restart.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from sluice.common.v1 import common_pb2
from sluice.core.grpcx.certs import issue, load_authority, write_identity
from sluice.core.grpcx.tls import ClientTls, TlsFiles, channel_credentials
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.e2e.conftest import BIN, DEV_KEY, start_suite

pytestmark = pytest.mark.e2e


def secure(certs: Path, identity: str, server: str, port: int) -> grpc.aio.Channel:
    files = TlsFiles(certs / "ca.pem", certs / f"{identity}.pem", certs / f"{identity}-key.pem")
    tls = ClientTls(channel_credentials(files), server)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", tls.credentials, options=tls.options)


async def test_sluice_up_makes_certificates_and_serves_only_mtls(tmp_path: Path) -> None:
    with start_suite(tmp_path, envoy={"enabled": False}) as suite:
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


# The issue's item-1 probes: an attacker on the host calling internal services directly.
PROBES = (
    (
        "provider",
        "sluice.provider.v1.ProviderService/Stream",
        {"backend": "simulated", "messages": [{"role": "user", "content": "hi"}]},
    ),
    (
        "limiter",
        "sluice.limiter.v1.LimiterService/Acquire",
        {"api_key_id": "someone-else", "model": "default", "requests": 1, "tokens": 10},
    ),
    ("telemetry", "sluice.telemetry.v1.TelemetryService/GetTrace", {"trace_id": "0" * 32}),
    (
        "telemetry",
        "sluice.telemetry.v1.TelemetryService/SearchTraces",
        {"attributes": {"user_id": "u1"}},
    ),
)
ACQUIRE = limiter_pb2.AcquireRequest(
    api_key_id="someone-else", model="default", requests=1, tokens=10
)


def test_the_edge_streams_over_mtls_and_plaintext_probes_are_refused(tmp_path: Path) -> None:
    # Envoy on, its rate limit filter calling the limiter and its tracer exporting to
    # telemetry (the e2e suite config): every one of its upstream hops is mTLS here.
    # The default: no `security` section at all.
    with start_suite(tmp_path) as suite:
        ports = suite.ports
        with httpx.stream(
            "POST",
            f"http://127.0.0.1:{ports['envoy']}/v1/generate",
            headers={"authorization": f"Bearer {DEV_KEY}"},
            json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        ) as response:
            assert response.status_code == 200, response.read()
            events = [
                json.loads(line.removeprefix("data: "))
                for line in response.iter_lines()
                if line.startswith("data: ")
            ]
        assert "metadata" in events[0] and "complete" in events[-1], events
        assert any("data" in event for event in events)
        # The OpenAI-compatible route (Envoy -> the router's HTTP listener) works too.
        chat = httpx.post(
            f"http://127.0.0.1:{ports['envoy']}/v1/chat/completions",
            headers={"authorization": f"Bearer {DEV_KEY}"},
            json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"]

        # Envoy's rate limit filter reached the limiter's RLS over mTLS (its failure mode
        # lets requests pass, so only the limiter's own count proves the hop worked).
        rls = [
            sample
            for family in text_string_to_metric_families(
                httpx.get(suite.metrics_url("limiter"), timeout=5).text
            )
            for sample in family.samples
            if sample.name == "sluice_rpc_requests_total"
            and sample.labels.get("method", "").endswith("RateLimitService/ShouldRateLimit")
        ]
        assert {s.labels["code"] for s in rls} == {"OK"}, rls
        assert sum(s.value for s in rls) >= 2

        for part, method, body in PROBES:
            probe = subprocess.run(
                [
                    str(BIN / "grpcurl"),
                    "-plaintext",
                    "-d",
                    json.dumps(body),
                    f"127.0.0.1:{ports[part]}",
                    method,
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert probe.returncode != 0, (part, probe.stdout)
            assert "content" not in probe.stdout and "reservation" not in probe.stdout.lower()

            assert probe.stdout.strip() == "", (part, probe.stdout)  # nothing answered


async def test_wrong_identity_and_expired_certificates_are_refused(tmp_path: Path) -> None:
    with start_suite(tmp_path, envoy={"enabled": False}) as suite:
        certs = suite.certs
        assert certs is not None
        # The router may take capacity: the same call is fine with its certificate...
        async with suite.channel("limiter", "router") as channel:
            granted = await limiter_pb2_grpc.LimiterServiceStub(channel).Acquire(
                ACQUIRE, timeout=10
            )
        assert granted.reservation_id
        # ...and refused to the provider's identity, a certificate from the same CA.
        async with suite.channel("limiter", "provider") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await limiter_pb2_grpc.LimiterServiceStub(channel).Acquire(ACQUIRE, timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "provider" in (denied.value.details() or "")

        # The router's identity, signed by the suite's CA, but expired yesterday.
        now = datetime.datetime.now(datetime.UTC)
        expired = issue(
            load_authority(certs),
            "router",
            not_before=now - datetime.timedelta(days=2),
            not_after=now - datetime.timedelta(days=1),
        )
        stale = tmp_path / "expired"
        stale.mkdir()
        write_identity(stale, "router", *expired)
        files = TlsFiles(certs / "ca.pem", stale / "router.pem", stale / "router-key.pem")
        tls = ClientTls(channel_credentials(files), "limiter")
        async with grpc.aio.secure_channel(
            suite.grpc("limiter"), tls.credentials, options=tls.options
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await limiter_pb2_grpc.LimiterServiceStub(channel).Acquire(ACQUIRE, timeout=10)
        # Refused at the handshake: gRPC reports no server status for it.
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # The router's HTTP listener (OpenAI-compatible API) likewise: TLS only, and only
        # Envoy's and the operator's identities.
        models = f"https://127.0.0.1:{suite.ports['router_http']}/v1/models"
        assert await get(models.replace("https", "http"), None) is None  # refused
        assert (await get(models, https(certs, "operator"))) == 200
        assert (await get(models, https(certs, "provider"))) == 403
        assert await get(models, https(stale, "router", certs)) is None  # expired


async def get(url: str, context: ssl.SSLContext | None) -> int | None:
    """The status of a GET with the development key, or None when the connection fails."""
    async with httpx.AsyncClient(verify=context or True, timeout=10) as client:
        try:
            response = await client.get(url, headers={"authorization": f"Bearer {DEV_KEY}"})
        except httpx.TransportError:
            return None
    if response.status_code == 403:
        assert response.json()["error"]["code"] == "authorization_error", response.text
    return response.status_code


def https(directory: Path, identity: str, ca: Path | None = None) -> ssl.SSLContext:
    """A client context presenting `identity`'s certificate from `directory`."""
    context = ssl.create_default_context(cafile=str((ca or directory) / "ca.pem"))
    context.load_cert_chain(directory / f"{identity}.pem", directory / f"{identity}-key.pem")
    return context


def served_serial(certs: Path, port: int, alpn: str = "h2") -> int:
    """The serial number of the certificate a service presents on a new connection."""
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(certs / "operator.pem", certs / "operator-key.pem")
    context.set_alpn_protocols([alpn])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="router") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_a_rotated_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    with start_suite(tmp_path) as suite:
        certs = suite.certs
        assert certs is not None
        router_pid = int((tmp_path / "run" / "router.pid").read_text())
        before = served_serial(certs, suite.ports["router"])
        assert (
            before
            == x509.load_pem_x509_certificate((certs / "router.pem").read_bytes()).serial_number
        )

        # Rotate the router's pair in place (renamed into place, as a deployment tool or a
        # Secret update does), key first.
        cert, key = issue(load_authority(certs), "router")
        staging = tmp_path / "staging"
        staging.mkdir()
        write_identity(staging, "router", cert, key)
        os.replace(staging / "router-key.pem", certs / "router-key.pem")
        os.replace(staging / "router.pem", certs / "router.pem")

        assert served_serial(certs, suite.ports["router"]) == cert.serial_number != before
        http = served_serial(certs, suite.ports["router_http"], "http/1.1")
        assert http == cert.serial_number  # the HTTP listener's too
        assert int((tmp_path / "run" / "router.pid").read_text()) == router_pid
        # Envoy's new connections check the new certificate too (same CA and identity).
        response = httpx.post(
            f"{suite.edge}/v1/complete",
            headers={"authorization": f"Bearer {DEV_KEY}"},
            json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        chat = httpx.post(
            f"{suite.edge}/v1/chat/completions",
            headers={"authorization": f"Bearer {DEV_KEY}"},
            json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert chat.status_code == 200, chat.text
