"""OTLP destinations: OTLP/gRPC (TraceService/Export) and OTLP/HTTP (protobuf POST).

Jaeger (>= 1.35) and Grafana Tempo ingest both natively; docs/observability.md has the
settings. Retryable outcomes follow the OTLP specification: the gRPC codes below, and
HTTP 429, 502, 503, 504 (honouring Retry-After); anything else drops the batch.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace

from sluice.core.telemetry.http_post import HttpPoster
from sluice.telemetry.forward.forwarder import SENT, Outcome
from sluice.telemetry.sampling import StoredSpan

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
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
PROTOBUF = "application/x-protobuf"


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


Value = str | bool | int | float | bytes | list["Value"] | dict[str, "Value"] | None


def plain(value: otlp_common.AnyValue) -> Value:
    """An OTLP AnyValue as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    result: Value = getattr(value, kind)
    return result


def attributes(items: list[otlp_common.KeyValue]) -> dict[str, Value]:
    """OTLP attributes as a dict of plain values."""
    return {kv.key: plain(kv.value) for kv in items}


class OtlpGrpcSink:
    """TraceService/Export over a plaintext gRPC channel."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float,
        backoff_s: tuple[float, float],
        headers: dict[str, str],
    ) -> None:
        self._timeout = timeout_s
        # gRPC metadata keys are lower-case (e.g. Tempo's x-scope-orgid tenant header).
        self._metadata = tuple((key.lower(), value) for key, value in headers.items())
        initial, cap = backoff_s
        # gRPC's own reconnect backoff (up to 2 min by default) would outlast ours: align
        # it, and keep this channel's connection state out of the process-wide pool.
        # The operator's trace back end (Tempo, a collector: docs/observability.md); a TLS
        # setting for forwarding is not built yet, so this stays plaintext.
        self._channel = grpc.aio.insecure_channel(  # nosemgrep: sluice-plaintext-grpc-channel
            endpoint,
            options=(
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.initial_reconnect_backoff_ms", int(initial * 1000)),
                ("grpc.min_reconnect_backoff_ms", int(initial * 1000)),
                ("grpc.max_reconnect_backoff_ms", int(cap * 1000)),
            ),
        )
        self._stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)

    async def send(self, batch: list[StoredSpan]) -> Outcome:
        """One Export call."""
        try:
            response = await self._stub.Export(
                export_request(batch), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in RETRYABLE:
                return Outcome(retry=batch, error=str(err))
            return Outcome(failed=len(batch), error=str(err))
        return _partial(response, len(batch))

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()


def _partial(response: trace_service_pb2.ExportTraceServiceResponse, total: int) -> Outcome:
    # A partial success names how many spans were rejected (not which): they are final.
    rejected = min(total, response.partial_success.rejected_spans)
    if rejected:
        return Outcome(failed=rejected, error=response.partial_success.error_message)
    return SENT


class OtlpHttpSink:
    """ExportTraceServiceRequest as binary protobuf POSTed to .../v1/traces."""

    def __init__(self, url: str, *, timeout_s: float, headers: dict[str, str]) -> None:
        self._poster = HttpPoster(url, timeout_s=timeout_s, headers=headers)

    async def send(self, batch: list[StoredSpan]) -> Outcome:
        """One POST; a 2xx body is an ExportTraceServiceResponse (maybe partial)."""
        body = export_request(batch).SerializeToString()
        response = await self._poster.post(body, PROTOBUF)
        if 200 <= response.status < 300:
            parsed = trace_service_pb2.ExportTraceServiceResponse()
            try:
                parsed.ParseFromString(response.body)
            except DecodeError:  # a non-protobuf 2xx body still means accepted
                return SENT
            return _partial(parsed, len(batch))
        if response.status == 0 or response.status in RETRYABLE_HTTP:
            return Outcome(retry=batch, retry_after_s=response.retry_after_s, error=response.error)
        return Outcome(failed=len(batch), error=response.error)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._poster.close()
