"""ProviderService servicer and the provider's build_server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import Counter

from sluice.core.clock import Clock
from sluice.core.errors import ValidationError
from sluice.core.grpcx.methods import method_path
from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.types import ServicerContext
from sluice.provider.backends import Backend, build_backends, close_backends
from sluice.provider.coalescing import LoadCoalescer
from sluice.provider.faults import FAULT_HEADER, parse_fault_header
from sluice.provider.genai import GenAIInstruments
from sluice.provider.multiplex import Multiplexer
from sluice.provider.settings import ProviderSettings
from sluice.provider.simulated import SimulatedBackend
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc

log = logging.getLogger("sluice.provider")

_SERVICE = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"]
STREAM_METHOD = method_path(_SERVICE, "Stream")
MULTIPLEX_METHOD = method_path(_SERVICE, "Multiplex")


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    """Runs generations on configured back ends."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        host: ServiceHost,
        *,
        fault_injection: bool = False,
    ) -> None:
        self._backends = backends
        self._fault_injection = fault_injection
        # Multiplexed streams run Stream inside the same pipeline stages as Stream calls.
        self._multiplexer = Multiplexer(host.rpc_pipeline.stream_runner(STREAM_METHOD, self.Stream))
        host.rpc_pipeline.untrace(MULTIPLEX_METHOD)
        host.add_stopping(self._multiplexer.drain)
        self._streams = Counter(
            "sluice_provider_streams",
            "Provider streams by back end and outcome (completed, failed, cancelled).",
            ["backend", "outcome"],
            registry=host.registry,
        )
        self._tokens = Counter(
            "sluice_provider_output_tokens",
            "Output tokens streamed, by back end.",
            ["backend"],
            registry=host.registry,
        )

    async def Stream(  # noqa: N802 - gRPC method name
        self, request: provider_pb2.StreamRequest, context: ServicerContext
    ) -> AsyncIterator[provider_pb2.StreamEvent]:
        backend = self._backends.get(request.backend)
        if backend is None:
            raise ValidationError(
                f"unknown back end '{request.backend}'", metadata={"backend": request.backend}
            )
        faults = None
        if self._fault_injection:
            values = [v for k, v in context.invocation_metadata() or () if k == FAULT_HEADER]
            if values:
                faults = parse_fault_header([str(v) for v in values], request.backend)
        outcome = "failed"
        output_tokens = 0
        try:
            # Faults are the simulated model's; HTTP back ends fail for real.
            events = (
                backend.stream(request, faults)
                if faults is not None and isinstance(backend, SimulatedBackend)
                else backend.stream(request)
            )
            async for event in events:
                if event.HasField("end"):
                    output_tokens = event.end.usage.output_tokens
                yield event
            outcome = "completed"
        except BaseException as err:
            if not isinstance(err, Exception):
                # Cancelled: the caller went away; stop generating at once.
                outcome = "cancelled"
            raise
        finally:
            self._streams.labels(request.backend, outcome).inc()
            if output_tokens:
                self._tokens.labels(request.backend).inc(output_tokens)

    async def Multiplex(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[provider_pb2.MultiplexRequest],
        context: ServicerContext,
    ) -> None:
        await self._multiplexer.serve(request_iterator, context)

    async def ListBackends(  # noqa: N802 - gRPC method name
        self,
        request: provider_pb2.ListBackendsRequest,
        context: ServicerContext,
    ) -> provider_pb2.ListBackendsResponse:
        return provider_pb2.ListBackendsResponse(
            backends=[
                provider_pb2.BackendInfo(name=name, kind=backend.kind)
                for name, backend in self._backends.items()
            ]
        )


def build_server(
    settings: ProviderSettings,
    *,
    clock: Clock | None = None,
    tracer_provider: TracerProvider | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServiceHost:
    """Wire the provider service. Call ``await host.start()`` to bind and serve.

    `environ` replaces os.environ as the source of API keys named by ``api_key_env``.
    """
    host = ServiceHost("provider", settings, tracer_provider=tracer_provider)
    tracer = host.tracer_provider.get_tracer("sluice.provider") if host.tracing_active else None
    coalescer = LoadCoalescer(settings.coalescing, host.registry)
    backends = build_backends(
        settings,
        clock=clock,
        instruments=GenAIInstruments(host.registry, tracer),
        environ=environ,
        coalescer=coalescer,
    )

    host.coalescer = coalescer  # type: ignore[attr-defined]
    host.add_startup(coalescer.start)
    host.add_cleanup(lambda: close_backends(backends))
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(
        ProviderServicer(backends, host, fault_injection=settings.fault_injection), host.server
    )
    host.add_service(_SERVICE.full_name)
    return host
