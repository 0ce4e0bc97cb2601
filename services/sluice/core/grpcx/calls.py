"""The bookkeeping every served call gets, whatever its front: request id, a SERVER
span, the request counter and latency by final code, errors by reason.

The gRPC server pipeline (core/grpcx/interceptors.py) keeps one `CallRecord` per RPC;
an HTTP or WebSocket handler, which that pipeline never sees, wraps itself in
`served(...)` and so is counted and traced under its own method name the same way.
"""

from __future__ import annotations

import time
from types import TracebackType

import grpc
from opentelemetry import trace

from sluice.core.errors import SluiceError
from sluice.core.grpcx.call_context import Metadata
from sluice.core.grpcx.request_context import accept_request_id, request_id_var
from sluice.core.telemetry.grpc_server import ServerSpan
from sluice.core.telemetry.metrics import RpcMetrics
from sluice.core.telemetry.tracing import FailedSpans


class CallRecord:
    """One call from arrival to its final code: sets the request id, opens the span."""

    __slots__ = ("_method", "_metrics", "error_type", "span", "started")

    def __init__(
        self,
        method: str,
        metadata: Metadata | None,
        metrics: RpcMetrics,
        tracer: trace.Tracer | None,
        failed_spans: FailedSpans | None = None,
    ) -> None:
        request_id_var.set(accept_request_id(metadata))
        self._method = method
        self._metrics = metrics
        self.span = (
            ServerSpan(tracer, method, metadata or (), failed_spans) if tracer is not None else None
        )
        self.started = time.perf_counter()
        self.error_type: str | None = None

    def count_error(self, reason: str) -> None:
        """The call failed with `reason` (counted now; on the span when it ends)."""
        self.error_type = reason
        self._metrics.count_error(self._method, reason)

    def finish(self, code: grpc.StatusCode) -> None:
        """Count the call with its final code and end its span."""
        self._metrics.observe(self._method, code.name, time.perf_counter() - self.started)
        if self.span is not None:
            self.span.finish(code, code.name, self.error_type)


class served:  # noqa: N801 - used like a function: `with served(...) as call:`
    """A handler outside gRPC as one call: `fail(error)` for the error it answers with;
    anything that escapes the block (a cancel, a dropped connection) ends it CANCELLED."""

    __slots__ = ("_record", "code")

    def __init__(
        self, method: str, metadata: Metadata, metrics: RpcMetrics, tracer: trace.Tracer | None
    ) -> None:
        self._record = CallRecord(method, metadata, metrics, tracer)
        self.code = grpc.StatusCode.OK

    def fail(self, error: SluiceError) -> None:
        """The handler answers with `error`."""
        self.code = error.code
        self._record.count_error(error.reason)

    def __enter__(self) -> served:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._record.finish(grpc.StatusCode.CANCELLED if kind is not None else self.code)
