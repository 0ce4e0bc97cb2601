"""The back-end registry: one object per configured back end, chosen by its kind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from sluice.core.clock import Clock, SystemClock
from sluice.core.config import ConfigError
from sluice.provider.anthropic import AnthropicBackend
from sluice.provider.coalescing import LoadCoalescer
from sluice.provider.genai import GenAIInstruments
from sluice.provider.http_backend import HttpBackend
from sluice.provider.openai_compat import OpenAIBackend
from sluice.provider.settings import HttpBackendSettings, ProviderSettings
from sluice.provider.simulated import SimulatedBackend
from sluice.provider.upstream import UpstreamClient, load_api_key
from sluice.provider.v1 import provider_pb2


class Backend(Protocol):
    """What the servicer needs of a back end."""

    name: str
    kind: str

    def stream(
        self, request: provider_pb2.StreamRequest
    ) -> AsyncIterator[provider_pb2.StreamEvent]:
        """Start, deltas / tool calls, end; failures raise SluiceError."""
        ...


_HTTP_KINDS: dict[str, type[HttpBackend]] = {
    "openai": OpenAIBackend,
    "anthropic": AnthropicBackend,
}


def build_backends(
    settings: ProviderSettings,
    *,
    clock: Clock | None = None,
    instruments: GenAIInstruments,
    environ: Mapping[str, str] | None = None,
    coalescer: LoadCoalescer | None = None,
) -> dict[str, Backend]:
    """Every configured back end by name. Keys are read now: a missing one fails start-up
    (ConfigError naming the back end and the source, never a value)."""
    clock = clock or SystemClock()
    backends: dict[str, Backend] = {}
    for name, backend_settings in settings.backends.items():
        if isinstance(backend_settings, HttpBackendSettings):
            try:
                key = load_api_key(backend_settings, environ)
            except ValueError as err:
                raise ConfigError(f"provider.backends.{name}: {err}") from None
            backends[name] = _HTTP_KINDS[backend_settings.kind](
                name,
                backend_settings,
                client=UpstreamClient(backend_settings),
                key=key,
                clock=clock,
                instruments=instruments,
                coalescer=coalescer,
            )
        else:
            backends[name] = SimulatedBackend(name, backend_settings, clock)
    return backends


async def close_backends(backends: Mapping[str, Backend]) -> None:
    """Close the connection pools of the HTTP back ends."""
    for backend in backends.values():
        if isinstance(backend, HttpBackend):
            await backend.aclose()
