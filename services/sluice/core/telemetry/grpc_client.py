"""CLIENT spans for unary and server-streaming calls (TracedChannel).

opentelemetry-instrumentation-grpc ends a streaming client span only when the caller
iterates the stream to its end; a stream that is cancelled or abandoned leaves the span
open forever (a known gap). Here the span ends from the call's done callback, which
fires on completion, error and cancellation alike, and adds no per-message work.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from sluice.core.telemetry.grpc_server import SERVER_ERROR_CODES, rpc_attributes
from sluice.core.telemetry.unsampled import (
    traceparent_headers,
    unsampled_child,
    unsampled_current,
)

if TYPE_CHECKING:
    from sluice.core.telemetry.tracing import FailedSpans


class _MetadataSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key, value))


_SETTER = _MetadataSetter()


def _code_now(call: Any) -> grpc.StatusCode | None:
    """The status code of a finished call without a task, or None when not yet known.

    grpc.aio only offers `await call.code()`; on a finished call that coroutine returns
    without suspending, so driving it one step reads the code synchronously (a task per
    call just for this was a measurable share of the tracing cost).
    """
    coroutine = call.code()
    try:
        coroutine.send(None)
    except StopIteration as done:
        code: grpc.StatusCode = done.value
        return code
    coroutine.close()
    return None


def _end(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code == grpc.StatusCode.CANCELLED:
        span.add_event("cancelled")
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


async def _finish_later(span: trace.Span, call: Any, pending: _Unsampled | None) -> None:
    code = await call.code()
    if pending is None:
        _end(span, code)
    else:
        pending.finish(code)


class _Unsampled:
    """What an unrecorded CLIENT span needs to be exported should the call fail."""

    __slots__ = ("_failed", "_method", "_parent", "_span", "_started_ns")

    def __init__(
        self,
        failed: FailedSpans,
        span: trace.Span,
        method: str,
        parent: SpanContext | None = None,
    ) -> None:
        self._failed = failed
        self._span = span
        self._method = method
        self._started_ns = time.time_ns()
        self._parent = parent or trace.get_current_span().get_span_context()

    def finish(self, code: grpc.StatusCode) -> None:
        if code in SERVER_ERROR_CODES:
            self._failed.export(
                self._method,
                SpanKind.CLIENT,
                context=self._span.get_span_context(),
                parent=self._parent,
                start_ns=self._started_ns,
                attributes=rpc_attributes(self._method, code, None),
                description=code.name,
            )


class ClientSpans:
    """Starts a call's CLIENT span and watches the call to end it (no grpc interceptor)."""

    def __init__(self, tracer: trace.Tracer, failed: FailedSpans | None) -> None:
        self._tracer = tracer
        self._failed = failed
        self._pending: set[asyncio.Task[None]] = set()

    def begin(
        self, name: str, metadata: Any
    ) -> tuple[trace.Span, grpc.aio.Metadata, _Unsampled | None]:
        current = unsampled_current()
        if current is not None:
            # An unsampled trace: a child id and the traceparent, without the SDK's path.
            child = unsampled_child(current)
            headers = [*(metadata or ()), *traceparent_headers(child.get_span_context())]
            pending = None
            if self._failed is not None:
                pending = _Unsampled(self._failed, child, name, parent=current)
            return child, grpc.aio.Metadata(*headers), pending
        service, _, rpc_method = name.lstrip("/").partition("/")
        span = self._tracer.start_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method},
        )
        carrier: list[tuple[str, str]] = list(metadata or ())
        propagate.inject(carrier, context=trace.set_span_in_context(span), setter=_SETTER)
        unsampled = (
            _Unsampled(self._failed, span, name)
            if not span.is_recording() and self._failed is not None
            else None
        )
        return span, grpc.aio.Metadata(*carrier), unsampled

    def end(self, span: trace.Span, unsampled: _Unsampled | None, code: grpc.StatusCode) -> None:
        """End a span begun for a call that is not a grpc call of its own (a multiplexed
        stream), with the code it ended with."""
        if unsampled is not None:
            unsampled.finish(code)
        elif span.is_recording():
            _end(span, code)

    def watch(self, call: Any, span: trace.Span, unsampled: _Unsampled | None) -> None:
        if not span.is_recording() and unsampled is None:
            return  # nothing to record at the end

        def done(finished: Any) -> None:
            code = _code_now(finished)
            if code is None:  # not expected on a done call; stay correct anyway
                task = asyncio.ensure_future(_finish_later(span, finished, unsampled))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            elif unsampled is not None:
                unsampled.finish(code)
            else:
                _end(span, code)

        call.add_done_callback(done)


class _TracedCallable:
    """A unary-unary or unary-stream multi-callable whose calls get CLIENT spans."""

    __slots__ = ("_inner", "_name", "_spans")

    def __init__(self, inner: Any, name: str, spans: ClientSpans) -> None:
        self._inner = inner
        self._name = name
        self._spans = spans

    def __call__(self, request: Any, *, metadata: Any = None, **kwargs: Any) -> Any:
        span, traced_metadata, unsampled = self._spans.begin(self._name, metadata)
        try:
            call = self._inner(request, metadata=traced_metadata, **kwargs)
        except BaseException:
            if unsampled is not None:
                unsampled.finish(grpc.StatusCode.UNAVAILABLE)
            elif span.is_recording():
                span.set_status(Status(StatusCode.ERROR, "call failed to start"))
                span.end()
            raise
        self._spans.watch(call, span, unsampled)
        return call


class TracedChannel:
    """Wraps a grpc.aio channel: unary and server-streaming calls get CLIENT spans.

    Not grpc.aio client interceptors: grpc.aio runs every intercepted call
    through an extra task and wrapper objects, a fixed cost paid whether or not the
    trace is sampled; wrapping the stub's multi-callables costs only the span itself.
    Stubs built on this channel are used as usual.
    """

    def __init__(
        self, channel: grpc.aio.Channel, tracer: trace.Tracer, failed: FailedSpans | None
    ) -> None:
        self._channel = channel
        self._spans = ClientSpans(tracer, failed)

    @property
    def client_spans(self) -> ClientSpans:
        """Begins and ends CLIENT spans for calls made by other means (multiplexed streams)."""
        return self._spans

    @staticmethod
    def _name(method: Any) -> str:
        return method.decode() if isinstance(method, bytes) else str(method)

    def unary_unary(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """A traced unary-unary multi-callable."""
        inner = self._channel.unary_unary(method, *args, **kwargs)
        return _TracedCallable(inner, self._name(method), self._spans)

    def unary_stream(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """A traced unary-stream multi-callable."""
        inner = self._channel.unary_stream(method, *args, **kwargs)
        return _TracedCallable(inner, self._name(method), self._spans)

    def __getattr__(self, name: str) -> Any:
        # Everything else (close, get_state, channel_ready, streaming multi-callables).
        return getattr(self._channel, name)
