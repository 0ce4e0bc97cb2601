"""One call's context, the same for every front: gRPC, HTTP and WebSocket.

A handler below the front (the router's Generate pipeline, a Converse turn) reads the
caller's metadata, deadline and peer from here, and asks `writer_behind` whether the
client is draining what it was sent, whatever transport the call came in on. The fronts
build it once per call (`CallContext.of_grpc`, `CallContext.of_http`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from sluice.core import headers
from sluice.core.grpcx.types import ServicerContext

Metadata = Sequence[tuple[str, str | bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class CallContext:
    """Metadata, deadline, peer and writer lag of one call."""

    metadata: Metadata = ()
    """The caller's metadata (for HTTP, the headers in `headers.FORWARDED`), lower-case keys."""
    deadline: float | None = None
    """When the caller stops waiting, in `time.monotonic()` seconds; None: no deadline."""
    peer: str = ""
    """The caller's address, as the transport reports it."""
    writer_behind: Callable[[], bool] | None = None
    """Non-blocking "the transport still holds unsent bytes" (the client lags); None when
    the front cannot tell (gRPC: only slow writes reveal a lagging client)."""

    @classmethod
    def of_grpc(cls, context: ServicerContext) -> CallContext:
        """The context of a gRPC call."""
        remaining = context.time_remaining()
        return cls(
            metadata=tuple(context.invocation_metadata() or ()),
            deadline=None if remaining is None else time.monotonic() + remaining,
            peer=context.peer() or "",
        )

    @classmethod
    def of_http(cls, request_headers: Mapping[str, str], peer: str | None) -> CallContext:
        """The context of an HTTP request."""
        return cls(metadata=http_metadata(request_headers.items()), peer=peer or "")

    def writing_to(self, transport: asyncio.Transport | None) -> CallContext:
        """This context for a response streamed on `transport` (gives `writer_behind`)."""
        if transport is None:
            return self
        return dataclasses.replace(self, writer_behind=_SendBuffer(transport).behind)

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()


def http_metadata(items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The HTTP headers handed on as call metadata, keys lowered."""
    return tuple((key.lower(), value) for key, value in items if key.lower() in headers.FORWARDED)


class _SendBuffer:
    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def behind(self) -> bool:
        """Whether earlier writes still sit in the transport's send buffer."""
        return self._transport.get_write_buffer_size() > 0
