"""Forwarding kept traces to OTLP/gRPC back ends (Jaeger, Tempo, a collector...).

One Forwarder per endpoint, each with its own bounded buffer and its own task, so a dead
or slow endpoint only fills (and then drops from) its own buffer and never stalls the
others or ingest. A failed export is retried with exponential backoff when the OTLP
spec calls its status retryable; the buffer drops the oldest spans first when full.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace
from prometheus_client import CollectorRegistry, Counter, Gauge

from sluice.telemetry.sampling import StoredSpan

log = logging.getLogger(__name__)

# OTLP/gRPC: these codes may succeed on retry; any other failure drops the batch.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def backoff_delay(attempt: int, initial_s: float, max_s: float, jitter: float) -> float:
    """Delay before retry `attempt` (1-based): initial * 2^(attempt-1), capped, times jitter.

    `jitter` is a number in [0, 1): the delay is scaled into [50%, 100%) of the cap so
    many forwarders do not retry in lock step.
    """
    base = min(max_s, initial_s * 2.0 ** (attempt - 1))
    return float(base * (0.5 + jitter / 2))


def export_request(spans: list[StoredSpan]) -> trace_service_pb2.ExportTraceServiceRequest:
    """One OTLP export of the spans, grouped back under their resource and scope."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    resources: dict[int, otlp_trace.ResourceSpans] = {}
    scopes: dict[tuple[int, int], otlp_trace.ScopeSpans] = {}
    for item in spans:
        resource_key = id(item.resource)
        resource_spans = resources.get(resource_key)
        if resource_spans is None:
            resource_spans = resources[resource_key] = request.resource_spans.add()
            resource_spans.resource.CopyFrom(item.resource)
        scope_key = (resource_key, id(item.scope))
        scope_spans = scopes.get(scope_key)
        if scope_spans is None:
            scope_spans = scopes[scope_key] = resource_spans.scope_spans.add()
            scope_spans.scope.CopyFrom(item.scope)
        scope_spans.spans.append(item.span)
    return request


class ForwardMetrics:
    """Counters shared by every forwarder, labelled by endpoint."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.spans = Counter(
            "sluice_telemetry_forwarded_spans",
            "Spans forwarded, by endpoint and result (sent, dropped, failed).",
            ["endpoint", "result"],
            registry=registry,
        )
        self.buffered = Gauge(
            "sluice_telemetry_forward_buffer_spans",
            "Spans waiting to be forwarded, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        self.retries = Counter(
            "sluice_telemetry_forward_retries",
            "Export attempts retried, by endpoint.",
            ["endpoint"],
            registry=registry,
        )


class Forwarder:
    """Sends kept spans to one OTLP/gRPC endpoint from a bounded buffer."""

    def __init__(
        self,
        endpoint: str,
        *,
        metrics: ForwardMetrics,
        max_buffer_spans: int,
        max_batch_spans: int,
        timeout_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        max_attempts: int,
    ) -> None:
        self.endpoint = endpoint
        self._buffer: deque[StoredSpan] = deque()
        self._max_buffer = max_buffer_spans
        self._max_batch = max_batch_spans
        self._timeout = timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._max_attempts = max_attempts
        self._ready = asyncio.Event()
        # gRPC's own reconnect backoff (up to 2 min by default) would outlast ours: align
        # it, and keep this channel's connection state out of the process-wide pool.
        self._channel = grpc.aio.insecure_channel(
            endpoint,
            options=(
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.initial_reconnect_backoff_ms", int(backoff_initial_s * 1000)),
                ("grpc.min_reconnect_backoff_ms", int(backoff_initial_s * 1000)),
                ("grpc.max_reconnect_backoff_ms", int(backoff_max_s * 1000)),
            ),
        )
        self._stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)
        self._sent = metrics.spans.labels(endpoint, "sent")
        self._dropped = metrics.spans.labels(endpoint, "dropped")
        self._failed = metrics.spans.labels(endpoint, "failed")
        self._retries = metrics.retries.labels(endpoint)
        self._gauge = metrics.buffered.labels(endpoint)
        self._task: asyncio.Task[None] | None = None
        self._random = random.Random()  # noqa: S311  # nosec B311

    def offer(self, spans: list[StoredSpan]) -> None:
        """Queue spans for sending; never blocks. The oldest are dropped beyond the bound."""
        self._buffer.extend(spans)
        overflow = len(self._buffer) - self._max_buffer
        if overflow > 0:
            for _ in range(overflow):
                self._buffer.popleft()
            self._dropped.inc(overflow)
        self._gauge.set(len(self._buffer))
        self._ready.set()

    def start(self) -> None:
        """Start the sending task."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"forward-{self.endpoint}"
        )

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            if not self._buffer:
                self._ready.clear()
                continue
            batch = [self._buffer.popleft() for _ in range(min(self._max_batch, len(self._buffer)))]
            self._gauge.set(len(self._buffer))
            await self._send(batch)

    async def _send(self, batch: list[StoredSpan]) -> bool:
        request = export_request(batch)
        for attempt in range(1, self._max_attempts + 1):
            try:
                await self._stub.Export(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE or attempt == self._max_attempts:
                    log.warning(
                        "forwarding %d spans to %s failed: %s", len(batch), self.endpoint, err
                    )
                    self._failed.inc(len(batch))
                    return False
                self._retries.inc()
                initial, cap = self._backoff
                await asyncio.sleep(backoff_delay(attempt, initial, cap, self._random.random()))
            else:
                self._sent.inc(len(batch))
                return True
        return False  # pragma: no cover - the loop always returns

    async def close(self, flush_timeout_s: float) -> None:
        """Try to send what is buffered within the timeout, then stop and close."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

        async def flush() -> None:
            while self._buffer:
                batch = [
                    self._buffer.popleft() for _ in range(min(self._max_batch, len(self._buffer)))
                ]
                if not await self._send(batch):
                    return

        try:
            await asyncio.wait_for(flush(), timeout=flush_timeout_s)
        except TimeoutError:
            log.warning("%s: %d spans not forwarded at shutdown", self.endpoint, len(self._buffer))
        await self._channel.close()
