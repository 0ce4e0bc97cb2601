"""Server interceptors, applied in this fixed order (outermost first):

1. RequestIdInterceptor   - takes `x-request-id` from metadata or makes one.
2. DeadlineInterceptor    - refuses work whose deadline is already (nearly) gone.
3. tracing                - OpenTelemetry's own aio server interceptor (see telemetry.tracing).
4. MetricsInterceptor     - counts requests by method and status, times them.
5. ErrorMappingInterceptor- turns SluiceError into a rich status; anything else
                            into INTERNAL, logged once with the trace id.

Error mapping is innermost so that tracing and metrics see the final status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from sluice.core.errors import DeadlineExceededError, InternalError, SluiceError, to_rpc_status
from sluice.core.grpcx.handlers import (
    StreamBehaviour,
    UnaryBehaviour,
    wrap_handler,
)
from sluice.core.grpcx.request_context import new_request_id, request_id_var
from sluice.core.grpcx.types import ServicerContext
from sluice.core.telemetry.metrics import RpcMetrics

log = logging.getLogger("sluice.rpc")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item in details.invocation_metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else value
    return None


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Makes the request id available to every layer below through a context variable."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        given = _metadata_value(handler_call_details, "x-request-id")
        # Accept a caller's id only if it is short and printable, so logs stay sane.
        request_id = given if given and len(given) <= 64 and given.isprintable() else None

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def run(request: Any, context: ServicerContext) -> Any:
                request_id_var.set(request_id or new_request_id())
                return await behaviour(request, context)

            return run

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def run(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
                request_id_var.set(request_id or new_request_id())
                async for response in behaviour(request, context):
                    yield response

            return run

        return wrap_handler(await continuation(handler_call_details), unary=unary, stream=stream)


class DeadlineInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a request whose remaining deadline is below `min_remaining_s`."""

    def __init__(self, min_remaining_s: float = 0.005) -> None:
        self._min_remaining_s = min_remaining_s

    async def _check(self, context: ServicerContext) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining < self._min_remaining_s:
            # This layer sits outside error mapping, so it aborts with the rich status itself.
            await abort_with(
                context,
                DeadlineExceededError(
                    f"deadline leaves {max(remaining, 0.0) * 1000:.0f} ms; request not started"
                ),
            )

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def run(request: Any, context: ServicerContext) -> Any:
                await self._check(context)
                return await behaviour(request, context)

            return run

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def run(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
                await self._check(context)
                async for response in behaviour(request, context):
                    yield response

            return run

        return wrap_handler(await continuation(handler_call_details), unary=unary, stream=stream)


def _final_code(context: ServicerContext, error: BaseException | None) -> str:
    if error is not None and not isinstance(error, Exception):
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "UNKNOWN" if error is not None else "OK"
    return str(getattr(code, "name", code))


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts RPCs by method and final status code and records their duration."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        observe = self._metrics.observe

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def run(request: Any, context: ServicerContext) -> Any:
                started = time.perf_counter()
                failure: BaseException | None = None
                try:
                    return await behaviour(request, context)
                except BaseException as err:
                    failure = err
                    raise
                finally:
                    observe(method, _final_code(context, failure), time.perf_counter() - started)

            return run

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def run(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                failure: BaseException | None = None
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as err:
                    failure = err
                    raise
                finally:
                    observe(method, _final_code(context, failure), time.perf_counter() - started)

            return run

        return wrap_handler(await continuation(handler_call_details), unary=unary, stream=stream)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """The one place exceptions become statuses. Clients never see a stack trace."""

    def __init__(self, on_error: Callable[[str, SluiceError], None] | None = None) -> None:
        self._on_error = on_error

    async def _abort(self, method: str, error: BaseException, context: ServicerContext) -> None:
        if isinstance(error, SluiceError):
            mapped = error
        else:
            # Unexpected: log once with the trace id (the log formatter adds it), hide details.
            log.error("unhandled error in %s", method, exc_info=error)
            mapped = InternalError("internal error; see the gateway logs for this request id")
        if self._on_error is not None:
            self._on_error(method, mapped)
        await abort_with(context, mapped)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def run(request: Any, context: ServicerContext) -> Any:
                try:
                    return await behaviour(request, context)
                except Exception as err:
                    if _is_abort(err):
                        raise
                    await self._abort(method, err, context)
                    raise  # unreachable: abort raises

            return run

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def run(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in behaviour(request, context):
                        yield response
                except Exception as err:
                    if _is_abort(err):
                        raise
                    await self._abort(method, err, context)
                    raise

            return run

        return wrap_handler(await continuation(handler_call_details), unary=unary, stream=stream)


def _is_abort(error: Exception) -> bool:
    # context.abort() raises AbortError once the status is set; it must pass through.
    return isinstance(error, grpc.aio.AbortError)


async def abort_with(context: ServicerContext, error: SluiceError) -> None:
    """End the RPC with the rich status of `error` (raises grpc.aio.AbortError)."""
    status = rpc_status.to_status(to_rpc_status(error))
    await context.abort(status.code, status.details, status.trailing_metadata)
