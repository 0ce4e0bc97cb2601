"""The router's wiring: the one place its parts are built and joined (docs/architecture.md)."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from sluice.core.clock import Clock, SystemClock
from sluice.core.grpcx.channels import internal_channel
from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.tls import client_tls, tls_files
from sluice.core.telemetry.spans import RequestSpans
from sluice.limiter.v1 import limiter_pb2_grpc
from sluice.router.admin import RouterAdminServicer
from sluice.router.admission import Admission
from sluice.router.attempts import Attempts, StreamMetrics
from sluice.router.auth import ApiKeyAuthenticator
from sluice.router.budgets import Budgets
from sluice.router.converse import Converser
from sluice.router.degradation import LocalLimits, MemoryGuard
from sluice.router.fallback import FallbackChain, ResilienceMetrics
from sluice.router.keystore import KeyStoreReader
from sluice.router.leases import LeaseBook
from sluice.router.limits import LimitMetrics, Limits
from sluice.router.pipeline import GeneratePipeline
from sluice.router.provider_streams import (
    PROVIDER_SERVICE,
    MultiplexedStreams,
    ProviderStreams,
    StreamCalls,
    split_target,
)
from sluice.router.recent_requests import RecentRequests
from sluice.router.service import RouterServicer
from sluice.router.settings import RouterSettings
from sluice.router.stream_caps import KeyCaps
from sluice.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc

if TYPE_CHECKING:
    from sluice.router.openai_http import OpenAIHttpApi


class RouterHost(ServiceHost):
    """The router's gRPC server, plus its HTTP listener when `http_api` is enabled."""

    def __init__(self, settings: RouterSettings) -> None:
        super().__init__("router", settings)
        self.http_api: OpenAIHttpApi | None = None
        """The OpenAI-compatible HTTP API (its `port` once started), or None when off."""

    @property
    def http_port(self) -> int:
        """The HTTP listener's port once started (0 while it is off or not started)."""
        return self.http_api.port if self.http_api is not None else 0

    def serve_http(
        self, api: OpenAIHttpApi, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Serve `api` on host:port from start-up (after gRPC) until after gRPC stops."""
        self.http_api = api

        async def start() -> None:
            await api.start(host, port, ssl_context)

        self.add_startup(start)
        self.add_stopping(api.drain)
        self.add_cleanup(api.stop)


def build_server(settings: RouterSettings, *, clock: Clock | None = None) -> RouterHost:
    """Wire the router service. Call ``await host.start()`` to bind and serve."""
    host = RouterHost(settings)
    clock = clock or SystemClock()
    tracing = host.tracer_provider if host.tracing_active else None
    limiter_channel = internal_channel(
        settings.limiter_address,
        "sluice.limiter.v1.LimiterService",
        tracing,
        tls=client_tls(settings.security, "router", "limiter"),
    )
    provider_service = PROVIDER_SERVICE.full_name
    # One credentials object for every provider channel (None when security.mtls is off).
    provider_tls = client_tls(settings.security, "router", "provider")
    provider_channel = internal_channel(
        settings.provider_address,
        provider_service,
        tracing,
        retries=False,
        # A stalled client's stream holds at most one 64 KiB window here (router/buffer.py).
        fixed_window=True,
        tls=provider_tls,
    )
    provider_streams: ProviderStreams = (
        MultiplexedStreams(
            [
                # Not the per-call channel: per-stream credit bounds a stalled stream
                # here, so the long-lived calls keep gRPC's probed (growing) window.
                internal_channel(
                    address, provider_service, tracing, retries=False, tls=provider_tls
                )
                for address in split_target(settings.provider_address)
            ],
            settings.provider_multiplex,
            fallback=StreamCalls(provider_channel),
        )
        if settings.provider_multiplex.enabled
        else StreamCalls(provider_channel)
    )
    spans = RequestSpans(
        host.tracer_provider.get_tracer("sluice.router") if host.tracing_active else None
    )
    chain = FallbackChain(settings, ResilienceMetrics(host.registry), clock, spans=spans)
    limits = Limits(
        limiter_pb2_grpc.LimiterServiceStub(limiter_channel),
        budgets=Budgets(settings.budgets, clock, host.registry),
        local_limits=LocalLimits(
            settings.resilience.local_limit_rps,
            settings.resilience.limiter_fail_closed,
            host.registry,
        ),
        leases=LeaseBook(clock, ask=settings.limiter_lease_requests, registry=host.registry),
        metrics=LimitMetrics(host.registry),
        clock=clock,
        timeout_s=settings.limiter_timeout_ms / 1000.0,
    )
    feedback = settings.feedback
    # Only when someone can send feedback: otherwise remembering ids is wasted work.
    recent = (
        RecentRequests(feedback.recent_requests, feedback.window_s, clock.monotonic)
        if feedback.enabled and settings.http_api.enabled
        else None
    )
    pipeline = GeneratePipeline(
        settings,
        authenticator=_authenticator(settings, clock),
        limits=limits,
        chain=chain,
        attempts=Attempts(
            provider_streams,
            StreamMetrics(host.registry),
            progress_interval_s=settings.progress_interval_ms / 1000.0,
        ),
        memory=MemoryGuard(settings.resilience.memory_limit_mb, clock, host.registry),
        clock=clock,
        admission=(
            Admission(
                settings.admission,
                clock,
                host.registry,
                memory_limit_bytes=settings.resilience.memory_limit_mb * 1024 * 1024,
                spans=spans,
            )
            if settings.admission.enabled
            else None
        ),
        audit=host.audit,
        caps=KeyCaps(host.registry, clock.monotonic),
        recent=recent,
    )
    converser = Converser(
        pipeline,
        settings.converse,
        host.registry,
        host.tracer_provider.get_tracer("sluice.router.converse") if host.tracing_active else None,
        monotonic=clock.monotonic,
    )
    router_pb2_grpc.add_RouterServiceServicer_to_server(
        RouterServicer(pipeline, converser), host.server
    )
    host.add_service(router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name)
    admin_pb2_grpc.add_RouterAdminServiceServicer_to_server(
        RouterAdminServicer(chain, host.audit), host.server
    )
    host.add_service(admin_pb2.DESCRIPTOR.services_by_name["RouterAdminService"].full_name)

    async def close_channels() -> None:
        await limits.drain()  # the last streams' spend and reconcile calls first
        await limiter_channel.close()
        await provider_streams.close()
        await provider_channel.close()
        await chain.close()

    host.add_cleanup(close_channels)
    if settings.http_api.enabled:
        _serve_http_api(host, settings, pipeline, converser, recent)
    return host


def _authenticator(settings: RouterSettings, clock: Clock) -> ApiKeyAuthenticator:
    """Keys from settings, plus the key store when one is configured (router/keystore.py)."""
    keys = settings.keys
    secret = keys.secret_file()
    store = (
        KeyStoreReader(
            keys.store_path,
            secret,
            reload_interval_s=keys.reload_interval_s,
            monotonic=clock.monotonic,
        )
        if keys.store_path is not None and secret is not None
        else None
    )
    return ApiKeyAuthenticator(
        settings.api_keys,
        dev_mode=settings.dev_mode,
        store=store,
        streams=settings.streams,
        wall=clock.wall,
    )


def _serve_http_api(
    host: RouterHost,
    settings: RouterSettings,
    pipeline: GeneratePipeline,
    converser: Converser,
    recent: RecentRequests | None,
) -> None:
    """The OpenAI-compatible HTTP listener (and the WebSocket bridge and the feedback
    route on it)."""
    # Imported only when enabled: aiohttp is not needed otherwise.
    from sluice.router.openai_http import OpenAIHttpApi  # noqa: PLC0415
    from sluice.router.websocket_bridge import WebSocketBridge  # noqa: PLC0415

    tracer = host.tracer_provider.get_tracer("sluice.router.http") if host.tracing_active else None
    api = OpenAIHttpApi(
        pipeline,
        host.metrics,
        tracer,
        max_request_bytes=settings.http_api.max_request_bytes,
        max_json_depth=settings.http_api.max_json_depth,
        shutdown_timeout_s=settings.server.shutdown_grace_s,
        pause_bytes=settings.buffer.pause_bytes,
    )
    if settings.converse.websocket_enabled:
        WebSocketBridge(
            converser, host.metrics, tracer, max_json_depth=settings.http_api.max_json_depth
        ).register(api.app)
    if recent is not None:
        from sluice.router.feedback import FeedbackApi, FeedbackMetrics  # noqa: PLC0415

        FeedbackApi(
            pipeline.authenticate,
            recent,
            FeedbackMetrics(host.registry, recent),
            max_comment_chars=settings.feedback.max_comment_chars,
            max_json_depth=settings.http_api.max_json_depth,
        ).register(api.app)
    context = None
    security = settings.security
    if security.mtls:  # like the gRPC port: TLS, a client certificate, an allowed identity
        from sluice.router.http_tls import HTTP_API, ReloadingContext, authorizer  # noqa: PLC0415
        from sluice.router.openai_http import error_response  # noqa: PLC0415

        context = ReloadingContext(tls_files(security, host.identity)).context
        api.app.middlewares.append(authorizer(security.allow.get(HTTP_API, []), error_response))
    host.serve_http(api, settings.http_api.host, settings.http_api.port, context)
