"""Mutual TLS and per-method authorization between the suite's parts (issue 16 item 1).

Real services (provider, limiter, telemetry, router) serve with `security.mtls` on and
certificates from `sluice certs`' code; callers present real certificates over loopback.
What each refusal looks like is what gRPC really does: a caller the handshake refuses
(plaintext, no client certificate, another CA, an expired certificate) never gets a
status from the server and sees UNAVAILABLE; a verified identity that may not call the
method gets PERMISSION_DENIED with the AUTHORIZATION_ERROR reason.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from sluice.common.v1 import common_pb2
from sluice.core.audit import read_records
from sluice.core.grpcx.certs import (
    cert_file,
    create_ca,
    issue,
    key_file,
    load_authority,
    write_identity,
    write_suite_certs,
)
from sluice.core.grpcx.channels import internal_channel
from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.tls import ClientTls, TlsFiles, channel_credentials
from sluice.limiter.service import build_server as build_limiter
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc
from sluice.provider.service import build_server as build_provider
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.wiring import build_server as build_router
from sluice.telemetry.service import build_server as build_telemetry
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from sluice.vendor.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from tests.integration.test_telemetry import export_request, otlp_span
from tests.support import (
    AUTH,
    ServiceStack,
    collect,
    error_info,
    eventually,
    limiter_settings,
    metric,
    provider_settings,
    router_settings,
    telemetry_settings,
)

SUITE = ("router", "limiter", "provider", "telemetry", "envoy", "operator")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The suite's CA and certificates, plus the misfits the tests present:
    `expired` (router's identity, expired yesterday), `rogue` (router's identity from
    another CA) and `stranger` (a valid certificate naming no suite identity)."""
    directory = tmp_path_factory.mktemp("certs")
    write_suite_certs(directory / "suite")
    authority = load_authority(directory / "suite")
    now = datetime.datetime.now(datetime.UTC)
    expired = issue(
        authority,
        "router",
        not_before=now - datetime.timedelta(days=2),
        not_after=now - datetime.timedelta(days=1),
    )
    (directory / "expired").mkdir()
    write_identity(directory / "expired", "router", *expired)
    (directory / "rogue").mkdir()
    write_identity(directory / "rogue", "router", *issue(create_ca(), "router"))
    write_identity(directory / "suite", "stranger", *issue(authority, "stranger"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def security(certs: Path, **fields: Any) -> dict[str, Any]:
    return {"security": {"mtls": True, "certs_dir": str(certs / "suite"), **fields}}


def client(certs: Path, identity: str, server: str, *, kind: str = "suite") -> ClientTls:
    files = TlsFiles(
        ca=certs / "suite" / "ca.pem",
        cert=certs / kind / cert_file(identity),
        key=certs / kind / key_file(identity),
    )
    return ClientTls(channel_credentials(files), server)


class Channels:
    """Channels opened by a test, closed at its end."""

    def __init__(self) -> None:
        self.opened: list[grpc.aio.Channel] = []

    def tls(self, host: ServiceHost, tls: ClientTls) -> grpc.aio.Channel:
        channel = internal_channel(f"127.0.0.1:{host.port}", "any", None, retries=False, tls=tls)
        self.opened.append(channel)
        return channel

    def plain(self, host: ServiceHost) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
        self.opened.append(channel)
        return channel

    def no_client_cert(self, host: ServiceHost, certs: Path, server: str) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials((certs / "suite" / "ca.pem").read_bytes())
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{host.port}",
            credentials,
            options=(("grpc.ssl_target_name_override", server),),
        )
        self.opened.append(channel)
        return channel

    async def aclose(self) -> None:
        for channel in self.opened:
            await channel.close()


@pytest.fixture
async def channels() -> Any:
    opened = Channels()
    yield opened
    await opened.aclose()


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        result = call()
        if hasattr(result, "__aiter__"):
            await collect(result)
        else:
            await result
    return caught.value


async def assert_denied(call: Any, identity: str) -> None:
    err = await refused(call)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    info = error_info(err)
    assert info.reason == "AUTHORIZATION_ERROR"
    assert info.metadata["identity"] == identity


async def assert_handshake_refused(call: Any) -> None:
    err = await refused(call)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()


def stream_request() -> provider_pb2.StreamRequest:
    return provider_pb2.StreamRequest(
        request_id="r-1",
        backend="simulated",
        messages=[common_pb2.Message(role="user", content="hello")],
    )


async def test_only_the_router_calls_the_provider(
    stack: ServiceStack, certs: Path, channels: Channels
) -> None:
    provider = await stack.start(build_provider(provider_settings(**security(certs))))

    def stub(identity: str, kind: str = "suite") -> provider_pb2_grpc.ProviderServiceStub:
        tls = client(certs, identity, "provider", kind=kind)
        return provider_pb2_grpc.ProviderServiceStub(channels.tls(provider, tls))

    events = await collect(stub("router").Stream(stream_request(), timeout=10))
    assert events[-1].HasField("end")
    listed = await stub("router").ListBackends(provider_pb2.ListBackendsRequest(), timeout=10)
    assert [b.name for b in listed.backends] == ["simulated"]
    # Operators may list the back ends (docs/runbooks.md), not generate; Envoy neither.
    listed = await stub("operator").ListBackends(provider_pb2.ListBackendsRequest(), timeout=10)
    assert [b.name for b in listed.backends] == ["simulated"]
    await assert_denied(
        lambda: stub("envoy").ListBackends(provider_pb2.ListBackendsRequest(), timeout=10),
        "envoy",
    )
    for identity in ("envoy", "operator", "limiter", "telemetry", "stranger"):
        await assert_denied(
            lambda i=identity: stub(i).Stream(stream_request(), timeout=10), identity
        )
    # Refused at the handshake: plaintext, no client certificate, another CA, expired.
    plain = provider_pb2_grpc.ProviderServiceStub(channels.plain(provider))
    await assert_handshake_refused(lambda: plain.Stream(stream_request(), timeout=5))
    anonymous = provider_pb2_grpc.ProviderServiceStub(
        channels.no_client_cert(provider, certs, "provider")
    )
    await assert_handshake_refused(lambda: anonymous.Stream(stream_request(), timeout=5))
    for kind in ("rogue", "expired"):
        await assert_handshake_refused(
            lambda k=kind: stub("router", k).Stream(stream_request(), timeout=5)
        )


async def test_the_limiter_admits_the_router_to_acquire_and_envoy_to_rls(
    stack: ServiceStack, certs: Path, channels: Channels
) -> None:
    limiter = await stack.start(build_limiter(limiter_settings(**security(certs))))

    def stubs(identity: str) -> tuple[Any, Any]:
        channel = channels.tls(limiter, client(certs, identity, "limiter"))
        return limiter_pb2_grpc.LimiterServiceStub(channel), rls_pb2_grpc.RateLimitServiceStub(
            channel
        )

    acquire = limiter_pb2.AcquireRequest(
        api_key_id="someone-else", model="default", requests=1, tokens=10
    )
    rls = rls_pb2.RateLimitRequest(domain="sluice")
    router_limiter, router_rls = stubs("router")
    assert (await router_limiter.Acquire(acquire, timeout=10)).reservation_id
    await assert_denied(lambda: router_rls.ShouldRateLimit(rls, timeout=10), "router")
    envoy_limiter, envoy_rls = stubs("envoy")
    await envoy_rls.ShouldRateLimit(rls, timeout=10)
    await assert_denied(lambda: envoy_limiter.Acquire(acquire, timeout=10), "envoy")
    for identity in ("provider", "operator", "stranger"):
        limiter_stub, _ = stubs(identity)
        await assert_denied(lambda s=limiter_stub: s.Acquire(acquire, timeout=10), identity)
    plain = limiter_pb2_grpc.LimiterServiceStub(channels.plain(limiter))
    await assert_handshake_refused(lambda: plain.Acquire(acquire, timeout=5))


async def test_every_part_exports_to_telemetry_and_only_operators_query(
    stack: ServiceStack, certs: Path, channels: Channels
) -> None:
    telemetry = await stack.start(build_telemetry(telemetry_settings(**security(certs))))

    def channel(identity: str) -> grpc.aio.Channel:
        return channels.tls(telemetry, client(certs, identity, "telemetry"))

    trace_id = os.urandom(16)
    for index, identity in enumerate(("router", "limiter", "provider", "telemetry", "envoy")):
        receiver = trace_service_pb2_grpc.TraceServiceStub(channel(identity))
        span = otlp_span(trace_id, os.urandom(8), name=identity, start=index, end=index + 1)
        response = await receiver.Export(export_request(f"svc-{identity}", span), timeout=10)
        assert not response.HasField("partial_success")
    for identity in ("operator", "stranger"):
        receiver = trace_service_pb2_grpc.TraceServiceStub(channel(identity))
        await assert_denied(
            lambda r=receiver: r.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=10),
            identity,
        )

    operator = telemetry_pb2_grpc.TelemetryServiceStub(channel("operator"))
    await operator.GetStats(telemetry_pb2.GetStatsRequest(), timeout=10)

    async def stored() -> int:
        try:
            got = await operator.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=trace_id.hex()))
        except grpc.aio.AioRpcError:
            return 0
        return len(got.spans)

    assert await eventually(stored, lambda n: n == 5, within_s=5) == 5
    request = telemetry_pb2.GetTraceRequest(trace_id=trace_id.hex())
    for identity in ("router", "provider", "envoy", "limiter"):
        query = telemetry_pb2_grpc.TelemetryServiceStub(channel(identity))
        await assert_denied(lambda q=query: q.GetTrace(request, timeout=10), identity)
        await assert_denied(
            lambda q=query: q.SearchTraces(telemetry_pb2.SearchTracesRequest(), timeout=10),
            identity,
        )
    plain = telemetry_pb2_grpc.TelemetryServiceStub(channels.plain(telemetry))
    await assert_handshake_refused(lambda: plain.GetStats(telemetry_pb2.GetStatsRequest()))


async def test_spans_reach_telemetry_over_mtls_from_a_service(
    stack: ServiceStack, certs: Path, channels: Channels
) -> None:
    # The real OTLP exporter of a service (the provider's) under mtls.
    telemetry = await stack.start(build_telemetry(telemetry_settings(**security(certs))))
    tracing = {
        "enabled": True,
        "endpoint": f"127.0.0.1:{telemetry.port}",
        "export_delay_ms": 50,
        "sample_ratio": 1.0,
    }
    provider = await stack.start(
        build_provider(provider_settings(tracing=tracing, **security(certs)))
    )
    router_stub = provider_pb2_grpc.ProviderServiceStub(
        channels.tls(provider, client(certs, "router", "provider"))
    )
    trace_id = os.urandom(16).hex()
    metadata = (("traceparent", f"00-{trace_id}-{os.urandom(8).hex()}-01"),)
    await collect(router_stub.Stream(stream_request(), metadata=metadata, timeout=10))
    operator = telemetry_pb2_grpc.TelemetryServiceStub(
        channels.tls(telemetry, client(certs, "operator", "telemetry"))
    )

    async def services() -> set[str]:
        try:
            got = await operator.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=trace_id))
        except grpc.aio.AioRpcError:
            return set()
        return {s.service_name for s in got.spans}

    assert "sluice-provider" in await eventually(services, bool, within_s=10)


async def test_envoy_and_operators_call_the_router_and_nobody_else(
    stack: ServiceStack, certs: Path, channels: Channels
) -> None:
    # ListModels needs neither limiter nor provider: the addresses are never dialled.
    router = await stack.start(
        build_router(router_settings("127.0.0.1:1", "127.0.0.1:1", **security(certs)))
    )

    def stub(identity: str) -> router_pb2_grpc.RouterServiceStub:
        return router_pb2_grpc.RouterServiceStub(
            channels.tls(router, client(certs, identity, "router"))
        )

    for identity in ("envoy", "operator"):
        listed = await stub(identity).ListModels(
            router_pb2.ListModelsRequest(), metadata=AUTH, timeout=10
        )
        assert [m.id for m in listed.models] == ["default"]
    for identity in ("provider", "limiter", "telemetry", "stranger"):
        await assert_denied(
            lambda i=identity: stub(i).ListModels(
                router_pb2.ListModelsRequest(), metadata=AUTH, timeout=10
            ),
            identity,
        )
    plain = router_pb2_grpc.RouterServiceStub(channels.plain(router))
    await assert_handshake_refused(
        lambda: plain.ListModels(router_pb2.ListModelsRequest(), metadata=AUTH, timeout=5)
    )


async def test_health_is_open_to_any_suite_identity_and_counts_refusals(
    stack: ServiceStack, certs: Path, channels: Channels
) -> None:
    provider = await stack.start(build_provider(provider_settings(**security(certs))))
    for identity in SUITE:
        health = health_pb2_grpc.HealthStub(
            channels.tls(provider, client(certs, identity, "provider"))
        )
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    denied = provider_pb2_grpc.ProviderServiceStub(
        channels.tls(provider, client(certs, "envoy", "provider"))
    )
    await assert_denied(lambda: denied.Stream(stream_request(), timeout=10), "envoy")
    assert (
        await metric(
            provider.metrics_port,
            "sluice_errors_total",
            method="/sluice.provider.v1.ProviderService/Stream",
            reason="AUTHORIZATION_ERROR",
        )
        == 1
    )


async def test_a_client_checks_it_reached_the_service_it_meant(
    stack: ServiceStack, certs: Path, channels: Channels
) -> None:
    # A router that dialled the limiter's address expecting the provider refuses it.
    limiter = await stack.start(build_limiter(limiter_settings(**security(certs))))
    wrong = provider_pb2_grpc.ProviderServiceStub(
        channels.tls(limiter, client(certs, "router", "provider"))
    )
    await assert_handshake_refused(lambda: wrong.Stream(stream_request(), timeout=5))


async def test_certificates_replaced_on_disk_are_served_without_a_restart(
    stack: ServiceStack, certs: Path, channels: Channels, tmp_path: Path
) -> None:
    own = tmp_path / "provider-certs"
    shutil.copytree(certs / "suite", own)
    settings = provider_settings(security={"mtls": True, "certs_dir": str(own)})
    provider = await stack.start(build_provider(settings))
    old = provider_pb2_grpc.ProviderServiceStub(
        channels.tls(provider, client(certs, "router", "provider"))
    )
    await collect(old.Stream(stream_request(), timeout=10))

    # Rotate to a new CA: the provider's files first, then the router's new pair.
    fresh = tmp_path / "fresh"
    write_suite_certs(fresh, ("provider", "router"))
    for name in ("ca.pem", cert_file("provider"), key_file("provider")):
        shutil.copy(fresh / name, own / name)
    renewed = TlsFiles(
        ca=fresh / "ca.pem", cert=fresh / cert_file("router"), key=fresh / key_file("router")
    )
    new = provider_pb2_grpc.ProviderServiceStub(
        channels.tls(provider, ClientTls(channel_credentials(renewed), "provider"))
    )
    events = await collect(new.Stream(stream_request(), timeout=10))
    assert events[-1].HasField("end")
    stale = provider_pb2_grpc.ProviderServiceStub(
        channels.tls(provider, client(certs, "router", "provider"))
    )
    await assert_handshake_refused(lambda: stale.Stream(stream_request(), timeout=5))


async def test_refused_calls_are_in_the_audit_log(
    stack: ServiceStack, certs: Path, channels: Channels, tmp_path: Path
) -> None:
    audit = {"enabled": True, "directory": str(tmp_path / "audit")}
    provider = await stack.start(build_provider(provider_settings(audit=audit, **security(certs))))
    envoy = provider_pb2_grpc.ProviderServiceStub(
        channels.tls(provider, client(certs, "envoy", "provider"))
    )
    await assert_denied(lambda: envoy.Stream(stream_request(), timeout=10), "envoy")
    router = provider_pb2_grpc.ProviderServiceStub(
        channels.tls(provider, client(certs, "router", "provider"))
    )
    await collect(router.Stream(stream_request(), timeout=10))
    await stack.stop(provider)  # flushes the log

    records = read_records(tmp_path / "audit" / "provider.jsonl")
    assert [(r["action"], r["actor"], r["target"], r["outcome"]) for r in records] == [
        ("call.refused", "envoy", "/sluice.provider.v1.ProviderService/Stream", "PERMISSION_DENIED")
    ]


async def grpcurl(certs: Path, identity: str, port: int, method: str) -> tuple[int, str]:
    directory = certs / "suite"
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "grpcurl"),
        "-cacert", str(directory / "ca.pem"),
        "-cert", str(directory / cert_file(identity)),
        "-key", str(directory / key_file(identity)),
        "-servername", "telemetry",
        "-d", '{"window_s": 60}',
        f"127.0.0.1:{port}",
        method,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_the_documented_grpcurl_calls_work_as_the_operator_only(
    stack: ServiceStack, certs: Path
) -> None:
    # docs/security.md's operator examples, as written there.
    telemetry = await stack.start(build_telemetry(telemetry_settings(**security(certs))))
    method = "sluice.telemetry.v1.TelemetryService/GetStats"
    code, output = await grpcurl(certs, "operator", telemetry.port, method)
    assert code == 0, output
    assert '"window_s": 60' in output
    code, output = await grpcurl(certs, "provider", telemetry.port, method)
    assert code != 0
    assert "PermissionDenied" in output and "identity 'provider'" in output
    code, output = await grpcurl(certs, "operator", telemetry.port, "list")
    assert code == 0 and "sluice.telemetry.v1.TelemetryService" in output, output


async def test_the_router_dials_limiter_and_provider_over_mtls(
    stack: ServiceStack, certs: Path, channels: Channels
) -> None:
    # Limiter and provider serve only mTLS; a router that dialled them in plaintext
    # could not stream (its Acquire would fail the handshake).
    limiter = await stack.start(build_limiter(limiter_settings(**security(certs))))
    provider = await stack.start(build_provider(provider_settings(**security(certs))))
    for multiplex in (False, True):
        router = await stack.start(
            build_router(
                router_settings(
                    limiter,
                    provider,
                    provider_multiplex={"enabled": multiplex},
                    **security(certs),
                )
            )
        )
        stub = router_pb2_grpc.RouterServiceStub(
            channels.tls(router, client(certs, "envoy", "router"))
        )
        request = router_pb2.GenerateRequest(
            model="default", messages=[common_pb2.Message(role="user", content="hello")]
        )
        events = await collect(stub.Generate(request, metadata=AUTH, timeout=20))
        assert [e.WhichOneof("event") for e in events][-1] == "complete", events[-1]
        assert events[-1].complete.finish_reason == common_pb2.FINISH_REASON_STOP
        assert any(e.HasField("data") for e in events)
        await stack.stop(router)
