"""Spans inside a request: queue waits, cache operations, Redis commands (docs/observability.md).

One `RequestSpans` per service, built from its tracer (None when tracing is off). Every
helper is a context manager that costs one attribute check when there is nothing to
record, and records only inside a *sampled* trace: an unsampled trace (head sampling
left it out, `keep_errors` records its spans only to export failures) gets none of
these children, since a failed wait, cache miss or Redis error also shows on the
service's own SERVER/CLIENT spans, which are still recorded. This keeps the cost of a
low head ratio low.

    spans = RequestSpans(tracer)
    with spans.queue_wait("admission", {"sluice.priority": "normal"}):
        await queue.get_turn()          # the span lasts as long as the wait
    with spans.redis(client_address, "GET"):
        await client.get(key)

A queue wait that raises (timed out, refused, cancelled) ends with `sluice.queue.outcome`
saying so; only unexpected exceptions set an ERROR status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

Attributes = Mapping[str, AttributeValue]


def _sampled_parent() -> trace.Span | None:
    """The current span when it is recording and sampled, else None."""
    parent = trace.get_current_span()
    if parent.is_recording() and parent.get_span_context().trace_flags.sampled:
        return parent
    return None


class _NoSpan:
    """What the helpers return when nothing is recorded."""

    __slots__ = ()

    def __enter__(self) -> trace.Span:
        return trace.INVALID_SPAN

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_NO_SPAN = _NoSpan()


class _Timed:
    """A span that ends when the block ends; made current only when it may have children."""

    __slots__ = ("_current", "_outcomes", "_span", "_token")

    def __init__(
        self, span: trace.Span, *, current: bool, outcomes: Mapping[type[BaseException], str]
    ) -> None:
        self._span = span
        self._current = current
        self._outcomes = outcomes
        self._token: object | None = None

    def __enter__(self) -> trace.Span:
        if self._current:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if exc is not None:
            expected = next((o for t, o in self._outcomes.items() if isinstance(exc, t)), None)
            if isinstance(exc, asyncio.CancelledError):
                span.add_event("cancelled")
                span.set_attribute("sluice.outcome", "cancelled")
            elif expected is not None:
                span.set_attribute("sluice.outcome", expected)
            else:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        span.end()


class RequestSpans:
    """Factory of the in-request spans of one service."""

    def __init__(self, tracer: trace.Tracer | None) -> None:
        self.tracer = tracer

    def _start(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        *,
        current: bool = False,
        outcomes: Mapping[type[BaseException], str] | None = None,
    ) -> _Timed | _NoSpan:
        tracer = self.tracer
        if tracer is None or _sampled_parent() is None:
            return _NO_SPAN
        span = tracer.start_span(name, kind=kind, attributes=attributes)
        return _Timed(span, current=current, outcomes=outcomes or {})

    def queue_wait(
        self,
        queue: str,
        attributes: Attributes | None = None,
        *,
        refusals: Mapping[type[BaseException], str] | None = None,
    ) -> _Timed | _NoSpan:
        """An INTERNAL span ``queue_wait {queue}`` lasting as long as the wait.

        `refusals` maps exception types the wait may end with by design (e.g. a full
        bulkhead) to the `sluice.outcome` they record; they do not mark the span failed.
        """
        values: dict[str, AttributeValue] = {"sluice.queue.name": queue}
        if attributes:
            values.update(attributes)
        return self._start(f"queue_wait {queue}", SpanKind.INTERNAL, values, outcomes=refusals)

    def cache(
        self, operation: str, store: str, attributes: Attributes | None = None
    ) -> _Timed | _NoSpan:
        """An INTERNAL span ``cache {operation}``, current so a Redis command nests in it."""
        values: dict[str, AttributeValue] = {
            "sluice.cache.operation": operation,
            "sluice.cache.store": store,
        }
        if attributes:
            values.update(attributes)
        return self._start(f"cache {operation}", SpanKind.INTERNAL, values, current=True)

    def redis(self, address: tuple[str, int], operation: str, db: int = 0) -> _Timed | _NoSpan:
        """A CLIENT span per Redis command, with the database semantic conventions.

        Both the current (`db.system.name`, `db.operation.name`) and the older
        (`db.system`, `db.operation`) attribute names, as back ends read either.
        """
        return self._start(
            operation,
            SpanKind.CLIENT,
            {
                "db.system.name": "redis",
                "db.system": "redis",
                "db.operation.name": operation,
                "db.operation": operation,
                "db.namespace": str(db),
                "server.address": address[0],
                "server.port": address[1],
            },
        )


def record_event(name: str, attributes: Attributes | None = None) -> None:
    """An event (retry, fallback step, breaker change) on the current span, if recording."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes or {})


def redis_address(client: object) -> tuple[tuple[str, int], int]:
    """(host, port) and database index of a redis-py client, for span attributes."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    return (str(kwargs.get("host", "")), int(kwargs.get("port", 0))), int(kwargs.get("db", 0))
