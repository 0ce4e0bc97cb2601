"""Fixtures for in-process services on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.service import build_server as build_limiter
from sluice.provider.service import build_server as build_provider
from sluice.telemetry.service import build_server as build_telemetry
from sluice.telemetry.v1 import telemetry_pb2_grpc
from tests.support import (
    FakeClock,
    RedisProcess,
    ServiceStack,
    Suite,
    limiter_settings,
    provider_settings,
    start_suite,
    telemetry_settings,
)


@pytest.fixture
async def suite(stack: ServiceStack) -> Suite:
    """The three request-path services with a fast simulated back end."""
    return await start_suite(stack)


@pytest.fixture
async def limiter_host(stack: ServiceStack, fake_clock: FakeClock) -> ServiceHost:
    """A limiter on a fake clock: a burst of 3 per key at 1 request/s ('big' gets 100)."""
    return await stack.start(
        build_limiter(
            limiter_settings(
                per_key={"capacity": 3, "refill_per_second": 1},
                key_overrides={"big": {"capacity": 100, "refill_per_second": 1}},
            ),
            clock=fake_clock,
        )
    )


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A real Redis-protocol server on a free port, stopped at teardown."""
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def provider_host(stack: ServiceStack) -> ServiceHost:
    """A provider with the fast simulated back end."""
    return await stack.start(build_provider(provider_settings()))


@pytest.fixture
async def telemetry_host(stack: ServiceStack) -> ServiceHost:
    """The telemetry service (OTLP receiver and trace queries)."""
    return await stack.start(build_telemetry(telemetry_settings()))


@pytest.fixture
def telemetry_stub(
    stack: ServiceStack, telemetry_host: ServiceHost
) -> telemetry_pb2_grpc.TelemetryServiceStub:
    return telemetry_pb2_grpc.TelemetryServiceStub(stack.channel(telemetry_host))
