"""In-process services on free loopback ports, wired together like the real suite."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.service import build_server as build_limiter
from sluice.limiter.settings import LimiterSettings
from sluice.limiter.v1 import limiter_pb2_grpc
from sluice.provider.service import build_server as build_provider
from sluice.provider.settings import ProviderSettings
from sluice.provider.v1 import provider_pb2_grpc
from sluice.router.service import build_server as build_router
from sluice.router.settings import RouterSettings
from sluice.router.v1 import router_pb2_grpc
from sluice.telemetry.service import build_server as build_telemetry
from sluice.telemetry.settings import TelemetrySettings
from sluice.telemetry.v1 import telemetry_pb2_grpc
from tests.support import (
    API_KEY,
    API_KEY_ID,
    FakeClock,
    ServiceStack,
    service_settings,
    sha256_hex,
)

# Fast but still streamed: several deltas per answer, a few milliseconds in all.
FAST_BACKEND = {"time_to_first_token_ms": 1, "tokens_per_second": 5_000, "min_tick_ms": 1}
# Slow enough that a client can act while the stream is still running.
SLOW_BACKEND = {
    "time_to_first_token_ms": 1,
    "tokens_per_second": 20,
    "min_tick_ms": 10,
    "answer_tokens": 2_000,
}


def limiter_settings(**fields: object) -> LimiterSettings:
    return service_settings(LimiterSettings, "limiter", **fields)


def provider_settings(backend: dict[str, object] | None = None, **fields: object) -> ProviderSettings:
    values: dict[str, object] = {"backends": {"simulated": backend or FAST_BACKEND}}
    values.update(fields)
    return service_settings(ProviderSettings, "provider", **values)


def router_settings(limiter: ServiceHost | str, provider: ServiceHost | str,
                    **fields: object) -> RouterSettings:
    def address(target: ServiceHost | str) -> str:
        return target if isinstance(target, str) else f"127.0.0.1:{target.port}"

    values: dict[str, object] = {
        "limiter_address": address(limiter),
        "provider_address": address(provider),
        "api_keys": [{"id": API_KEY_ID, "sha256": sha256_hex(API_KEY)}],
        "progress_interval_ms": 10,
    }
    values.update(fields)
    return service_settings(RouterSettings, "router", **values)


def telemetry_settings(**fields: object) -> TelemetrySettings:
    return service_settings(TelemetrySettings, "telemetry", **fields)


@dataclass
class Suite:
    """A router wired to an in-process limiter and provider, plus client stubs."""

    limiter: ServiceHost
    provider: ServiceHost
    router: ServiceHost
    router_stub: router_pb2_grpc.RouterServiceStub
    limiter_stub: limiter_pb2_grpc.LimiterServiceStub
    provider_stub: provider_pb2_grpc.ProviderServiceStub


async def start_suite(
    stack: ServiceStack,
    *,
    backend: dict[str, object] | None = None,
    limiter: dict[str, object] | None = None,
    router: dict[str, object] | None = None,
    tracing: dict[str, object] | None = None,
) -> Suite:
    """Start limiter, provider and router (tracing settings applied to all three)."""
    extra = {"tracing": tracing} if tracing else {}
    limiter_host = await stack.start(build_limiter(limiter_settings(**(limiter or {}), **extra)))
    provider_host = await stack.start(build_provider(provider_settings(backend, **extra)))
    router_host = await stack.start(
        build_router(router_settings(limiter_host, provider_host, **(router or {}), **extra))
    )
    return Suite(
        limiter=limiter_host,
        provider=provider_host,
        router=router_host,
        router_stub=router_pb2_grpc.RouterServiceStub(stack.channel(router_host)),
        limiter_stub=limiter_pb2_grpc.LimiterServiceStub(stack.channel(limiter_host)),
        provider_stub=provider_pb2_grpc.ProviderServiceStub(stack.channel(provider_host)),
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
async def provider_host(stack: ServiceStack) -> ServiceHost:
    """A provider with the fast simulated back end."""
    return await stack.start(build_provider(provider_settings()))


@pytest.fixture
async def telemetry_host(stack: ServiceStack) -> ServiceHost:
    """The telemetry service (OTLP receiver and trace queries)."""
    return await stack.start(build_telemetry(telemetry_settings()))


@pytest.fixture
def telemetry_stub(stack: ServiceStack, telemetry_host: ServiceHost) -> telemetry_pb2_grpc.TelemetryServiceStub:
    return telemetry_pb2_grpc.TelemetryServiceStub(stack.channel(telemetry_host))
