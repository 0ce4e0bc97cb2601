"""What every service gets from ServiceHost: health, reflection, metrics, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.service import build_server as build_limiter
from sluice.provider.service import build_server as build_provider
from sluice.router.wiring import build_server as build_router
from sluice.telemetry.service import build_server as build_telemetry
from tests.support import (
    ServiceStack,
    close_metrics_listener,
    eventually,
    limiter_settings,
    provider_settings,
    router_settings,
    scrape,
    telemetry_settings,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Each service: how to build it, and the gRPC services it declares.
SERVICES: dict[str, tuple[Callable[[], ServiceHost], tuple[str, ...]]] = {
    "limiter": (lambda: build_limiter(limiter_settings()), ("sluice.limiter.v1.LimiterService",)),
    "provider": (
        lambda: build_provider(provider_settings()),
        ("sluice.provider.v1.ProviderService",),
    ),
    # The router's channels connect lazily; nothing here calls its dependencies.
    "router": (
        lambda: build_router(router_settings("127.0.0.1:9", "127.0.0.1:9")),
        ("sluice.router.v1.RouterService",),
    ),
    "telemetry": (
        lambda: build_telemetry(telemetry_settings()),
        (
            "opentelemetry.proto.collector.trace.v1.TraceService",
            "sluice.telemetry.v1.TelemetryService",
        ),
    ),
}


@pytest.fixture(params=sorted(SERVICES))
async def service(
    request: pytest.FixtureRequest, stack: ServiceStack
) -> tuple[ServiceHost, tuple[str, ...]]:
    build, names = SERVICES[request.param]
    return await stack.start(build()), names


async def test_health_check_reports_serving(
    service: tuple[ServiceHost, tuple[str, ...]], stack: ServiceStack
) -> None:
    host, names = service
    health = health_pb2_grpc.HealthStub(stack.channel(host))

    for name in ("", *names):
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == SERVING, name

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_is_not_serving_while_stop_drains(
    service: tuple[ServiceHost, tuple[str, ...]], stack: ServiceStack
) -> None:
    host, names = service
    # An open stream keeps the server draining for the whole grace period.
    held = reflection_pb2_grpc.ServerReflectionStub(stack.channel(host)).ServerReflectionInfo()
    await held.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    assert (await asyncio.wait_for(held.read(), 5)).HasField("list_services_response")
    stopping = asyncio.create_task(host.stop(5))
    try:

        async def statuses() -> list[int]:
            # Over the wire a stopping server refuses new RPCs, so ask the servicer itself.
            return [
                (await host.health.Check(health_pb2.HealthCheckRequest(service=n), None)).status
                for n in ("", *names)
            ]

        assert await eventually(statuses, lambda s: set(s) == {NOT_SERVING}) == [NOT_SERVING] * (
            1 + len(names)
        )
        assert not stopping.done()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(stack.channel(host)).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        held.cancel()
        # With the last RPC gone, the drain ends well before the grace period.
        await asyncio.wait_for(stopping, 4)
        close_metrics_listener(host)


async def test_health_watch_sees_not_serving_when_stop_begins(stack: ServiceStack) -> None:
    # Watch is how a client observes the switch: new RPCs are refused once stop begins.
    host = await stack.start(build_limiter(limiter_settings()))
    health = health_pb2_grpc.HealthStub(stack.channel(host))
    watch = health.Watch(health_pb2.HealthCheckRequest(service="sluice.limiter.v1.LimiterService"))
    stopping: asyncio.Task[None] | None = None
    try:
        assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING

        stopping = asyncio.create_task(host.stop(5))
        update = await asyncio.wait_for(watch.read(), 5)

        assert update.status == NOT_SERVING
    finally:
        watch.cancel()
        if stopping is not None:
            await asyncio.wait_for(stopping, 6)
            close_metrics_listener(host)


async def test_reflection_lists_and_describes_the_service(
    service: tuple[ServiceHost, tuple[str, ...]], stack: ServiceStack
) -> None:
    host, names = service
    reflection = reflection_pb2_grpc.ServerReflectionStub(stack.channel(host))
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        *(reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in names),
    ]

    responses = [r async for r in reflection.ServerReflectionInfo(iter(requests))]

    listed = {s.name for s in responses[0].list_services_response.service}
    assert listed >= {*names, "grpc.health.v1.Health"}
    for name, response in zip(names, responses[1:], strict=True):
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto
        ]
        package, _, short = name.rpartition(".")
        assert any(f.package == package and short in [s.name for s in f.service] for f in files), (
            name
        )


async def test_metrics_endpoint_serves_prometheus_text(
    service: tuple[ServiceHost, tuple[str, ...]],
) -> None:
    host, _ = service

    families = {
        f.name: f.type for f in text_string_to_metric_families(await scrape(host.metrics_port))
    }

    assert families["sluice_rpc_requests"] == "counter"
    assert families["sluice_rpc_duration_seconds"] == "histogram"
    assert families["sluice_errors"] == "counter"


async def test_stop_releases_the_metrics_port(stack: ServiceStack) -> None:
    host = await stack.start(build_limiter(limiter_settings()))
    port = host.metrics_port

    await host.stop(0)

    try:
        with pytest.raises(ConnectionRefusedError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
    finally:
        # Keep a leaked socket from failing some later test with a ResourceWarning.
        close_metrics_listener(host)


async def test_stop_is_idempotent(stack: ServiceStack) -> None:
    host = await stack.start(build_limiter(limiter_settings()))
    await stack.stop(host)

    await asyncio.wait_for(host.stop(0), 2)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health_pb2_grpc.HealthStub(stack.channel(host)).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
