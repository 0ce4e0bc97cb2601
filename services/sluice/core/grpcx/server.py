"""Server bootstrap shared by every service: interceptors, health, reflection,
metrics, tracing, and graceful shutdown.

Shutdown order (docs/architecture.md, "Shutdown"): health NOT_SERVING ->
server.stop(grace) drains in-flight streams -> close clients -> flush telemetry -> stop
the metrics listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, Counter, ProcessCollector

from sluice.core.audit import AuditLog
from sluice.core.config import ServiceSettings
from sluice.core.grpcx.interceptors import ServerPipeline
from sluice.core.grpcx.tls import (
    Authorizer,
    client_tls,
    own_identity,
    server_credentials,
    tls_files,
)
from sluice.core.telemetry.error_reporting import build_reporter
from sluice.core.telemetry.limits import ResourceLimitsCollector
from sluice.core.telemetry.metrics import MetricsServer, RpcMetrics, serve_metrics, with_labels
from sluice.core.telemetry.tracing import build_tracer_provider, failed_spans_of

log = logging.getLogger("sluice.server")

Cleanup = Callable[[], Awaitable[None]]

# Keepalive and flow-control options suited to many long-lived streams on loopback.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
)


class ServiceHost:
    """One running gRPC service: its server, health state, metrics and tracer provider.

    A service's ``build_server`` creates a host, registers its servicers on
    ``host.server``, lists them in ``service_names`` and adds cleanups; the host does
    the rest.
    """

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        *,
        tracer_provider: TracerProvider | None = None,
        registry: CollectorRegistry | None = None,
        trace_rpcs: bool = True,
    ) -> None:
        self.name = name
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        if registry is None:
            # process_resident_memory_bytes & co., for the memory-growth alert; the
            # cgroup's limits beside them for the SLA's CPU and memory alerts.
            ProcessCollector(registry=self.registry)
            ResourceLimitsCollector(self.registry)
        self.spans_dropped = Counter(
            "sluice_spans_dropped",
            "Spans lost because the telemetry service could not take them.",
            registry=self.registry,
        )
        self.audit = AuditLog(settings.audit, name) if settings.audit.enabled else None
        """The audit log, when configured (core/audit.py)."""
        security = settings.security
        self.identity = own_identity(security, name)
        """Who this service is to the others (its certificate's identity under mtls)."""
        self.tracer_provider = tracer_provider or build_tracer_provider(
            f"sluice-{name}",
            settings.tracing,
            self.spans_dropped.inc,
            tls=client_tls(security, name, "telemetry"),
            redact_pii=settings.privacy.redact_pii,
        )
        self.metrics = RpcMetrics(name, self.registry)
        # With export off, spans would be built only to be dropped: skip them entirely.
        self.tracing_active = trace_rpcs and settings.tracing.enabled
        tracer = (
            self.tracer_provider.get_tracer("sluice.core.grpcx") if self.tracing_active else None
        )
        self.error_reporter = build_reporter(
            settings.error_reporting, name, redact_pii=settings.privacy.redact_pii
        )
        self.rpc_pipeline = ServerPipeline(
            self.metrics,
            tracer,
            reporter=self.error_reporter,
            failed_spans=failed_spans_of(self.tracer_provider),
        )
        # Under mtls the authorizer runs first: a refused call never reaches the pipeline.
        interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (
            (Authorizer(security.allow, self.metrics, self.audit), self.rpc_pipeline)
            if security.mtls
            else (self.rpc_pipeline,)
        )
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=(
                *SERVER_OPTIONS,
                ("grpc.max_concurrent_streams", settings.server.max_concurrent_streams),
            ),
        )
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names: list[str] = []
        self._cleanups: list[Cleanup] = []
        self._startups: list[Cleanup] = []
        self._stoppings: list[Callable[[], None]] = []
        audit = self.audit
        if audit is not None:

            async def close_audit() -> None:
                await asyncio.to_thread(audit.close)

            self._cleanups.append(close_audit)
        reporter = self.error_reporter
        if reporter is not None:

            async def close_reporter() -> None:
                await asyncio.to_thread(reporter.close)

            self._cleanups.append(close_reporter)
        self._metrics_server: MetricsServer | None = None
        self.port = 0
        self.metrics_port = 0
        self._stopped = asyncio.Event()

    def add_service(self, full_name: str) -> None:
        """Declare a registered service, for health and reflection."""
        self.service_names.append(full_name)

    def add_cleanup(self, cleanup: Cleanup) -> None:
        """Run `cleanup` after the server drained (e.g. close client channels)."""
        self._cleanups.append(cleanup)

    def add_stopping(self, stopping: Callable[[], None]) -> None:
        """Run `stopping` when a graceful stop begins, before in-flight RPCs drain (for
        calls that carry many requests and would otherwise never end by themselves)."""
        self._stoppings.append(stopping)

    def add_startup(self, startup: Cleanup) -> None:
        """Run `startup` once the gRPC server serves (e.g. bind an extra HTTP listener)."""
        self._startups.append(startup)

    async def start(self) -> None:
        """Bind, start serving, and report SERVING for every declared service."""
        server_settings = self.settings.server
        reflection.enable_server_reflection(
            (
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        address = f"{server_settings.host}:{server_settings.port}"
        security = self.settings.security
        if security.mtls:
            credentials = server_credentials(tls_files(security, self.identity))
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"{self.name}: cannot bind {server_settings.host}:{server_settings.port}")
        pool = {"pool": server_settings.pool} if server_settings.pool else {}
        self._metrics_server, self.metrics_port = serve_metrics(
            server_settings.host, server_settings.metrics_port, with_labels(self.registry, pool)
        )
        await self.server.start()
        for startup in self._startups:
            await startup()
        await self.set_serving(True)
        log.info(
            "%s listening on %s:%d (metrics :%d)",
            self.name,
            server_settings.host,
            self.port,
            self.metrics_port,
        )

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the whole server and each service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, drain in-flight RPCs, close clients, flush spans."""
        if self._stopped.is_set():
            return
        grace = self.settings.server.shutdown_grace_s if grace_s is None else grace_s
        await self.set_serving(False)
        for stopping in self._stoppings:
            stopping()
        await self.server.stop(grace)
        for cleanup in reversed(self._cleanups):
            try:
                await cleanup()
            except Exception:
                log.exception("%s: cleanup failed", self.name)
        # Flushing spans blocks on network I/O: keep it off the event loop.
        await asyncio.to_thread(self.tracer_provider.shutdown)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.stop)
        self._stopped.set()
        log.info("%s stopped", self.name)

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, requested.set)
        await requested.wait()
        log.info("%s: shutdown requested", self.name)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await self.stop()


def run(main: Callable[[], Coroutine[None, None, None]]) -> None:
    """Run a service's async main on uvloop (SLUICE_EVENT_LOOP=asyncio opts out)."""
    if os.environ.get("SLUICE_EVENT_LOOP", "uvloop") == "asyncio":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
        return
    import uvloop  # noqa: PLC0415 - the default loop, imported only when used

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())
