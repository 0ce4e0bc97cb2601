"""The telemetry service: OTLP TraceService receiver, tail sampling, forwarding, queries.

Flow: Export puts the request on a bounded ingest queue and returns at once (an export
that does not fit is rejected and counted, never waited for) → one worker feeds the
spans to the tail sampler → every tick, traces quiet for the decision wait are decided:
all of them feed the statistics and the service graph, the kept ones are stored for
queries and offered to every forwarder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace
from prometheus_client import Counter, Gauge

from sluice.core.audit import AuditLog
from sluice.core.clock import Clock, SystemClock
from sluice.core.erasure import check_user_id, record_erasure
from sluice.core.errors import FieldViolation, SluiceError, ValidationError
from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.types import ServicerContext
from sluice.core.telemetry.tracing import build_tracer_provider
from sluice.telemetry.forward import ForwardMetrics, build_forwarders
from sluice.telemetry.memory import MemoryCollector
from sluice.telemetry.privacy import names_user, redact_span
from sluice.telemetry.sampling import DecidedTrace, StoredSpan, TailSampler
from sluice.telemetry.settings import TelemetrySettings
from sluice.telemetry.stats import StatsCollector, WindowStats
from sluice.telemetry.store import SpanStore, service_name, to_read
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

log = logging.getLogger(__name__)

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
FORWARD_FLUSH_S = 2.0


class TraceNotFoundError(SluiceError):
    """No span of the trace is stored."""

    reason = "VALIDATION_ERROR"
    code = grpc.StatusCode.NOT_FOUND


class TracePipeline:
    """Ingest queue → tail sampler → statistics, store and forwarders."""

    def __init__(self, settings: TelemetrySettings, host: ServiceHost, clock: Clock) -> None:
        sampling = settings.sampling
        self.sampler = TailSampler(
            clock=clock,
            decision_wait_s=sampling.decision_wait_s,
            keep_ratio=sampling.keep_ratio,
            slow_threshold_ms=sampling.slow_threshold_ms,
            max_pending_traces=sampling.max_pending_traces,
            max_spans_per_trace=settings.max_spans_per_trace,
            max_pending_bytes=sampling.max_pending_bytes,
        )
        self.store = SpanStore(
            settings.max_traces, settings.max_spans_per_trace, settings.max_store_bytes
        )
        self.stats = WindowStats(
            clock=clock,
            max_window_s=settings.stats.window_s,
            apdex_t_ms=settings.stats.apdex_t_ms,
            max_samples=settings.stats.max_samples,
            max_bytes=settings.stats.max_bytes,
        )
        host.registry.register(StatsCollector(self.stats))
        self.forwarders = build_forwarders(settings.forward, ForwardMetrics(host.registry))
        stores = {
            "traces": (self.store.max_bytes, lambda: self.store.bytes_used),
            "pending_traces": (self.sampler.max_pending_bytes, lambda: self.sampler.pending_bytes),
            "stats_samples": (self.stats.max_bytes, lambda: self.stats.bytes_used),
            "decisions": (self.sampler.max_decided_bytes, lambda: self.sampler.decided_bytes),
        }
        if self.forwarders:
            stores["forward_buffers"] = (
                sum(f.max_bytes for f in self.forwarders),
                lambda: sum(f.bytes_used for f in self.forwarders),
            )
        host.registry.register(MemoryCollector(stores))
        self._queue: asyncio.Queue[list[otlp_trace.ResourceSpans]] = asyncio.Queue()
        self._queued_spans = 0
        self._max_queued = settings.ingest_queue_spans
        self._tick_s = min(0.25, max(0.01, sampling.decision_wait_s / 4))
        self._tasks: list[asyncio.Task[None]] = []
        self._redact = settings.privacy.redact_pii
        spans = Counter(
            "sluice_telemetry_spans",
            "Spans received, by result (accepted, dropped_queue_full, dropped_trace_limit).",
            ["result"],
            registry=host.registry,
        )
        self._accepted = spans.labels("accepted")
        self._dropped_queue = spans.labels("dropped_queue_full")
        self._dropped_limit = spans.labels("dropped_trace_limit")
        self._decisions = Counter(
            "sluice_telemetry_traces",
            "Traces decided by the tail sampler, by decision.",
            ["decision"],
            registry=host.registry,
        )
        self._queue_gauge = Gauge(
            "sluice_telemetry_ingest_queue_spans",
            "Spans received and not yet processed.",
            registry=host.registry,
        )
        self._pending_gauge = Gauge(
            "sluice_telemetry_pending_traces",
            "Traces waiting for a sampling decision.",
            registry=host.registry,
        )
        self._stored_gauge = Gauge(
            "sluice_telemetry_traces_stored", "Kept traces held in memory.", registry=host.registry
        )

    def offer(self, request: trace_service_pb2.ExportTraceServiceRequest) -> int:
        """Queue an export without waiting; returns the spans rejected (all or none)."""
        total = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        if self._queued_spans + total > self._max_queued:
            self._dropped_queue.inc(total)
            return total
        self._queued_spans += total
        self._queue_gauge.set(self._queued_spans)
        self._queue.put_nowait(list(request.resource_spans))
        self._accepted.inc(total)
        return 0

    def _ingest(self, resource_spans_list: list[otlp_trace.ResourceSpans]) -> None:
        rejected = total = 0
        add = self.sampler.add
        for resource_spans in resource_spans_list:
            service = service_name(resource_spans)
            resource = resource_spans.resource
            for scope_spans in resource_spans.scope_spans:
                scope = scope_spans.scope
                for span in scope_spans.spans:
                    total += 1
                    if self._redact:
                        redact_span(span)
                    if not add(StoredSpan(service, span, resource, scope)):
                        rejected += 1
        self._queued_spans -= total
        self._queue_gauge.set(self._queued_spans)
        if rejected:
            self._dropped_limit.inc(rejected)

    def erase_user(self, user_id: str) -> tuple[int, int]:
        """Delete every held trace naming the user (telemetry/privacy.py); returns the
        traces and spans deleted."""
        # What was received but not yet ingested is ingested first, so it is seen.
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self._ingest(self._queue.get_nowait())

        def match(span: otlp_trace.Span) -> bool:
            return names_user(span, user_id)

        erased = self.sampler.erase(match)
        stored = self.store.erase(match)
        self.sampler.forget_later_spans([trace_id for trace_id, _ in stored])
        erased += stored
        self._pending_gauge.set(len(self.sampler))
        self._stored_gauge.set(len(self.store))
        return len({trace_id for trace_id, _ in erased}), sum(count for _, count in erased)

    def decide(self, *, flush: bool = False) -> None:
        """Take every due decision and route the traces."""
        for decided in self.sampler.due(flush=flush):
            self._route(decided)
        self._pending_gauge.set(len(self.sampler))
        self._stored_gauge.set(len(self.store))

    def _route(self, decided: DecidedTrace) -> None:
        self.stats.record(decided.spans)
        if not decided.late:
            self._decisions.labels(decided.decision.value).inc()
        if decided.decision.kept:
            rejected = self.store.add(decided.trace_id, decided.spans)
            if rejected:
                self._dropped_limit.inc(rejected)
            for forwarder in self.forwarders:
                forwarder.offer(decided.spans)

    async def _work(self) -> None:
        while True:
            self._ingest(await self._queue.get())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                self.decide()
            except Exception:
                log.exception("tail sampling decision failed")

    def start(self) -> None:
        """Start the worker, the decision ticker and the forwarders."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(), name="telemetry-ingest"),
            loop.create_task(self._tick(), name="telemetry-decide"),
        ]
        for forwarder in self.forwarders:
            forwarder.start()

    async def close(self) -> None:
        """Process what was received, decide every trace, flush forwarders."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self._ingest(self._queue.get_nowait())
        self.decide(flush=True)
        await asyncio.gather(*(f.close(FORWARD_FLUSH_S) for f in self.forwarders))


class OtlpTraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Accepts OTLP/gRPC span exports; never blocks the sender."""

    def __init__(self, pipeline: TracePipeline) -> None:
        self._pipeline = pipeline

    async def Export(  # noqa: N802 - gRPC method name
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        rejected = self._pipeline.offer(request)
        response = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = "telemetry ingest queue full"
        return response


def _trace_id(text: str) -> bytes:
    trace_id = text.lower()
    if not _TRACE_ID.match(trace_id):
        raise ValidationError(
            "trace_id must be 32 hex digits",
            field_violations=[FieldViolation("trace_id", "must be 32 hex digits")],
        )
    return bytes.fromhex(trace_id)


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Serves stored traces, statistics and the dependency map; erases a user's traces."""

    def __init__(self, pipeline: TracePipeline, audit: AuditLog | None = None) -> None:
        self._pipeline = pipeline
        self._audit = audit

    async def GetTrace(  # noqa: N802 - gRPC method name
        self, request: telemetry_pb2.GetTraceRequest, context: ServicerContext
    ) -> telemetry_pb2.GetTraceResponse:
        trace_id = _trace_id(request.trace_id)
        # Kept spans plus any still waiting for the decision: a live trace is visible.
        items = self._pipeline.store.get(trace_id) + self._pipeline.sampler.pending(trace_id)
        if not items:
            raise TraceNotFoundError(f"no spans stored for trace {trace_id.hex()}")
        return telemetry_pb2.GetTraceResponse(trace_id=trace_id.hex(), spans=to_read(items))

    async def SearchTraces(  # noqa: N802 - gRPC method name
        self, request: telemetry_pb2.SearchTracesRequest, context: ServicerContext
    ) -> telemetry_pb2.SearchTracesResponse:
        if request.limit > 1000:
            raise ValidationError(
                "limit must be at most 1000",
                field_violations=[FieldViolation("limit", "must be at most 1000")],
            )
        return telemetry_pb2.SearchTracesResponse(traces=self._pipeline.store.search(request))

    async def GetServiceGraph(  # noqa: N802 - gRPC method name
        self, request: telemetry_pb2.GetServiceGraphRequest, context: ServicerContext
    ) -> telemetry_pb2.GetServiceGraphResponse:
        return self._pipeline.stats.graph(request.window_s)

    async def GetStats(  # noqa: N802 - gRPC method name
        self, request: telemetry_pb2.GetStatsRequest, context: ServicerContext
    ) -> telemetry_pb2.GetStatsResponse:
        return self._pipeline.stats.operations(request.window_s, request.service_name)

    async def GetBreakdown(  # noqa: N802 - gRPC method name
        self, request: telemetry_pb2.GetBreakdownRequest, context: ServicerContext
    ) -> telemetry_pb2.GetBreakdownResponse:
        return self._pipeline.stats.breakdown(request.window_s, request.limit)

    async def EraseUser(  # noqa: N802 - gRPC method name
        self, request: telemetry_pb2.EraseUserRequest, context: ServicerContext
    ) -> telemetry_pb2.EraseUserResponse:
        check_user_id(request.user_id)
        traces, spans = self._pipeline.erase_user(request.user_id)
        log.info("erased %d traces (%d spans) of a user", traces, spans)
        record_erasure(
            self._audit,
            context,
            service="telemetry",
            user_id=request.user_id,
            detail=f"traces_deleted={traces} spans_deleted={spans}",
        )
        return telemetry_pb2.EraseUserResponse(traces_deleted=traces, spans_deleted=spans)


class TelemetryHost(ServiceHost):
    """A ServiceHost that also runs the trace pipeline's background tasks."""

    pipeline: TracePipeline

    async def start(self) -> None:
        """Bind and serve, then start ingest, decisions and forwarding."""
        await super().start()
        self.pipeline.start()


def build_server(settings: TelemetrySettings, *, clock: Clock | None = None) -> ServiceHost:
    """Wire the telemetry service. Call ``await host.start()`` to bind and serve."""
    # Its own RPCs are not traced and nothing is exported: tracing itself would loop.
    quiet = build_tracer_provider(
        "sluice-telemetry", settings.tracing.model_copy(update={"enabled": False})
    )
    host = TelemetryHost("telemetry", settings, tracer_provider=quiet, trace_rpcs=False)
    pipeline = host.pipeline = TracePipeline(settings, host, clock or SystemClock())
    host.add_cleanup(pipeline.close)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
        OtlpTraceReceiver(pipeline), host.server
    )
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(
        TelemetryServicer(pipeline, host.audit), host.server
    )
    host.add_service(trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name)
    host.add_service(telemetry_pb2.DESCRIPTOR.services_by_name["TelemetryService"].full_name)
    return host
