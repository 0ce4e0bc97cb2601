"""The server pipeline: every RPC passes these stages, in this fixed order.

1. request id     - `x-request-id` from the metadata (Envoy sets one) or a new one, in a
                    context variable for logs and handlers.
2. tracing        - a SERVER span, child of the caller's W3C trace context.
3. metrics        - requests by method and final code, latency, errors by reason.
4. deadline       - work whose deadline is (nearly) gone is refused, not started.
5. error mapping  - SluiceError -> rich status; anything else -> INTERNAL, logged once
                    with the trace id, never shown to the client.

The stages run inside one wrapper per method, built once and cached: five separate
grpc.aio interceptors cost ~100 us per call (an await chain and a new handler per
layer per call), which is a third of a whole unary call. The deadline check runs
inside tracing and metrics so refused work is still traced and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status
from opentelemetry import trace

from sluice.core.errors import (
    HTTP_STATUS_HEADER,
    DeadlineExceededError,
    FieldViolation,
    InternalError,
    InvalidInputError,
    SluiceError,
    status_code,
    to_rpc_status,
)
from sluice.core.grpcx.calls import CallRecord
from sluice.core.grpcx.handlers import (
    StreamBehaviour,
    UnaryBehaviour,
    UndecodableRequest,
    wrap_handler,
)
from sluice.core.grpcx.request_context import request_id_var
from sluice.core.grpcx.types import ServicerContext
from sluice.core.telemetry.error_reporting import ErrorReporter
from sluice.core.telemetry.metrics import RpcMetrics
from sluice.core.telemetry.tracing import FailedSpans, current_trace_id

log = logging.getLogger("sluice.rpc")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

# Health probes and reflection would flood traces (Envoy checks every second).
UNTRACED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


async def abort_with(context: ServicerContext, error: SluiceError) -> None:
    """End the RPC with the rich status of `error` (raises grpc.aio.AbortError)."""
    status = rpc_status.to_status(to_rpc_status(error))
    trailing = (*status.trailing_metadata, (HTTP_STATUS_HEADER, str(error.http_status)))
    await context.abort(status.code, status.details, trailing)


class ServerPipeline(grpc.aio.ServerInterceptor):
    """Request id, tracing, metrics, deadline and error mapping for every RPC."""

    def __init__(
        self,
        metrics: RpcMetrics,
        tracer: trace.Tracer | None,
        *,
        min_deadline_s: float = 0.005,
        reporter: ErrorReporter | None = None,
        failed_spans: FailedSpans | None = None,
    ) -> None:
        self._reporter = reporter
        self._failed_spans = failed_spans
        self._metrics = metrics
        self._tracer = tracer
        self._min_deadline_s = min_deadline_s
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._untraced: set[str] = set()

    def untrace(self, method: str) -> None:
        """Give `method` no span of its own (a call that carries other calls' spans)."""
        self._untraced.add(method)

    def _traced(self, method: str) -> bool:
        return (
            self._tracer is not None
            and not method.startswith(UNTRACED_PREFIXES)
            and method not in self._untraced
        )

    def stream_runner(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        """`behaviour` inside every stage, for streams that do not arrive as calls of their
        own (ProviderService.Multiplex runs Stream this way, with a context of its own)."""
        return self._stream(method, self._traced(method), behaviour)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED; never cached
        traced = self._traced(method)
        wrapped = wrap_handler(
            handler,
            unary=lambda behaviour: self._unary(method, traced, behaviour),
            stream=lambda behaviour: self._stream(method, traced, behaviour),
        )
        self._handlers[method] = wrapped
        return wrapped

    # -- stages ------------------------------------------------------------------------

    def _begin(self, method: str, traced: bool, context: ServicerContext) -> CallRecord:
        return CallRecord(
            method,
            context.invocation_metadata(),
            self._metrics,
            self._tracer if traced else None,
            self._failed_spans,
        )

    @staticmethod
    def _check_request(method: str, request: Any) -> None:
        if isinstance(request, UndecodableRequest):
            message = f"the request body is not a valid {method.rsplit('/', 1)[-1]} message"
            raise InvalidInputError(
                message,
                metadata={"cause": "undecodable", "error": request.problem[:64]},
                field_violations=[FieldViolation("request", message)],
            )

    async def _check_deadline(self, context: ServicerContext) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining < self._min_deadline_s:
            raise DeadlineExceededError(
                f"deadline leaves {max(remaining, 0.0) * 1000:.0f} ms; request not started"
            )

    async def _map_error(
        self, method: str, call: CallRecord, error: Exception, context: ServicerContext
    ) -> None:
        if isinstance(error, SluiceError):
            mapped = error
        else:
            log.error("unhandled error in %s", method, exc_info=error)
            mapped = InternalError("internal error; see the gateway logs for this request id")
        call.count_error(mapped.reason)
        if self._reporter is not None:
            self._reporter.report(
                error,
                mapped,
                method=method,
                request_id=request_id_var.get(),
                trace_id=current_trace_id(),
            )
        await abort_with(context, mapped)

    def _end(
        self, method: str, call: CallRecord, context: ServicerContext, failure: BaseException | None
    ) -> None:
        if failure is not None and not isinstance(failure, Exception):
            code = grpc.StatusCode.CANCELLED
        else:
            raw = context.code()
            if isinstance(raw, grpc.StatusCode):
                code = raw
            elif raw is None or raw == 0:
                code = grpc.StatusCode.UNKNOWN if failure is not None else grpc.StatusCode.OK
            else:
                code = status_code(raw)
        call.finish(code)

    # -- wrappers ----------------------------------------------------------------------

    def _unary(self, method: str, traced: bool, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def run(request: Any, context: ServicerContext) -> Any:
            call = self._begin(method, traced, context)
            failure: BaseException | None = None
            try:
                self._check_request(method, request)
                await self._check_deadline(context)
                return await behaviour(request, context)
            except grpc.aio.AbortError as err:
                failure = err
                raise
            except Exception as err:
                failure = err
                await self._map_error(method, call, err, context)
                raise  # unreachable: abort raises
            except BaseException as err:
                failure = err
                raise
            finally:
                self._end(method, call, context, failure)

        return run

    def _stream(self, method: str, traced: bool, behaviour: StreamBehaviour) -> StreamBehaviour:
        # The wrapper is a coroutine that writes each response itself rather than an async
        # generator that grpc iterates. If the client leaves while grpc is busy writing, grpc
        # cancels its own task and abandons a generator it iterates; the generator (with the
        # upstream call inside it) would then be closed only by garbage collection, later and
        # in another context. Driving the handler's generator here, this task always closes
        # it at once, so a disconnect cancels the upstream call immediately.
        async def run(request: Any, context: ServicerContext) -> None:
            call = self._begin(method, traced, context)
            failure: BaseException | None = None
            responses: Any = None
            try:
                self._check_request(method, request)
                await self._check_deadline(context)
                responses = behaviour(request, context)
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        await context.write(response)
                else:
                    # A handler may also stream with context.write() and return nothing
                    # (grpc's own health Watch does).
                    await responses
            except grpc.aio.AbortError as err:
                failure = err
                raise
            except Exception as err:
                failure = err
                await self._map_error(method, call, err, context)
                raise
            except BaseException as err:
                failure = err
                raise
            finally:
                if responses is not None and hasattr(responses, "aclose"):
                    await _close_quietly(responses)
                self._end(method, call, context, failure)

        return run


async def _close_quietly(responses: Any) -> None:
    """Close a handler's response generator; its own clean-up errors are logged, not raised."""
    try:
        await responses.aclose()
    except Exception:
        log.exception("closing a response stream failed")
