"""A client-span interceptor for server-streaming calls.

opentelemetry-instrumentation-grpc ends a streaming client span only when the caller
iterates the stream to its end; a stream that is cancelled or abandoned leaves the span
open forever (a known gap). This interceptor ends the span from the call's done
callback instead, which fires on completion, error and cancellation alike, and adds no
per-message work.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import SpanKind, Status, StatusCode

from sluice.core.telemetry.grpc_server import SERVER_ERROR_CODES


class _MetadataSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key, value))


_SETTER = _MetadataSetter()


async def _finish(span: trace.Span, call: Any) -> None:
    code = await call.code()
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code == grpc.StatusCode.CANCELLED:
        span.add_event("cancelled")
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class TracedUnaryStreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Starts a CLIENT span per call, injects W3C trace context, ends the span when done."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._pending: set[asyncio.Task[None]] = set()

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        service, _, rpc_method = name.lstrip("/").partition("/")
        span = self._tracer.start_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method},
        )
        metadata: list[tuple[str, str]] = list(client_call_details.metadata or ())
        propagate.inject(metadata, context=trace.set_span_in_context(span), setter=_SETTER)
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            grpc.aio.Metadata(*metadata),
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        try:
            call = await continuation(details, request)
        except BaseException:
            span.set_status(Status(StatusCode.ERROR, "call failed to start"))
            span.end()
            raise

        def done(finished: Any) -> None:
            task = asyncio.ensure_future(_finish(span, finished))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        call.add_done_callback(done)
        return call
