"""Azure Monitor / Application Insights destination: track envelopes POSTed to /v2.1/track.

Why not `azure-monitor-opentelemetry-exporter`: it installs and does post to a local
ingestion endpoint offline, but it exports SDK spans synchronously over `requests` (a
thread per export here), owns its retries and an on-disk retry store (which would hide
the drops this forwarder must count and bound), collapses retryable and final failures
into one FAILURE, and starts process-wide threads that call Microsoft's statsbeat and
configuration endpoints unless environment variables switch them off. So the envelope is
encoded here, field for field as that exporter (1.0.0b58) sends it: kind SERVER/CONSUMER
→ `RequestData`, every other kind → `RemoteDependencyData`, with the operation tags that
link them into one end-to-end transaction. docs/observability.md shows the settings.
The connection string and the POST are shared with the metrics push
(services/sluice/core/telemetry/app_insights.py).
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime

from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace

from sluice.core.telemetry.app_insights import (
    RETRYABLE,
    SDK_VERSION,
    ConnectionString,
    TrackPoster,
    rejected_items,
)
from sluice.telemetry.forward.forwarder import SENT, Outcome
from sluice.telemetry.forward.otlp import Value, attributes
from sluice.telemetry.sampling import StoredSpan

REQUEST = "Microsoft.ApplicationInsights.Request"
DEPENDENCY = "Microsoft.ApplicationInsights.RemoteDependency"
MAX_PROPERTY = 8192  # Application Insights truncates longer property values


def duration(nanoseconds: int) -> str:
    """`d.hh:mm:ss.fff`, the TimeSpan text Application Insights expects."""
    value = (max(0, nanoseconds) + 500_000) // 1_000_000
    value, millis = divmod(value, 1000)
    value, seconds = divmod(value, 60)
    value, minutes = divmod(value, 60)
    days, hours = divmod(value, 24)
    return f"{days:d}.{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _text(value: Value) -> str:
    if isinstance(value, str):
        return value[:MAX_PROPERTY]
    return json.dumps(value, default=str)[:MAX_PROPERTY]


def _resource(item: StoredSpan) -> dict[str, Value]:
    return attributes(list(item.resource.attributes))


def envelope(item: StoredSpan, ikey: str) -> dict[str, object]:
    """One span as an Application Insights track envelope."""
    span = item.span
    values = attributes(list(span.attributes))
    resource = _resource(item)
    namespace = resource.get("service.namespace")
    role = f"{_text(namespace)}.{item.service_name}" if namespace else item.service_name
    instance = resource.get("service.instance.id") or platform.node()
    tags = {
        "ai.cloud.role": role,
        "ai.cloud.roleInstance": str(instance),
        "ai.internal.sdkVersion": SDK_VERSION,
        "ai.operation.id": span.trace_id.hex(),
    }
    if span.parent_span_id:
        tags["ai.operation.parentId"] = span.parent_span_id.hex()
    success = span.status.code != otlp_trace.Status.STATUS_CODE_ERROR
    code = values.get("rpc.grpc.status_code", values.get("http.response.status_code", 0))
    properties = {key: _text(value) for key, value in values.items() if value is not None}
    base: dict[str, object] = {
        "ver": 2,
        "id": span.span_id.hex(),
        "name": span.name[:1024],
        "duration": duration(span.end_time_unix_nano - span.start_time_unix_nano),
        "success": success,
        "properties": properties,
    }
    if span.kind in (otlp_trace.Span.SPAN_KIND_SERVER, otlp_trace.Span.SPAN_KIND_CONSUMER):
        name, base_type = REQUEST, "RequestData"
        base["responseCode"] = str(code)
        tags["ai.operation.name"] = span.name[:1024]
    else:
        name, base_type = DEPENDENCY, "RemoteDependencyData"
        base["resultCode"] = str(code)
        base["type"] = _dependency_type(span.kind, values)
        target = values.get("server.address", values.get("peer.service"))
        if isinstance(target, str):
            base["target"] = target
    started = datetime.fromtimestamp(span.start_time_unix_nano / 1e9, tz=UTC)
    return {
        "name": name,
        "time": started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "iKey": ikey,
        "tags": tags,
        "data": {"baseType": base_type, "baseData": base},
    }


def _dependency_type(kind: int, values: dict[str, Value]) -> str:
    if kind == otlp_trace.Span.SPAN_KIND_INTERNAL:
        return "InProc"
    if kind == otlp_trace.Span.SPAN_KIND_PRODUCER:
        return "Queue Message"
    if "rpc.system" in values:
        return "rpc.system"  # what the Azure exporter sends for RPC client spans
    if "http.request.method" in values or "http.method" in values:
        return "HTTP"
    return "N/A"


class AzureMonitorSink:
    """Track envelopes as a JSON array POSTed to `<IngestionEndpoint>/v2.1/track`."""

    def __init__(self, connection: ConnectionString, *, timeout_s: float) -> None:
        self._poster = TrackPoster(connection, timeout_s=timeout_s)

    async def send(self, batch: list[StoredSpan]) -> Outcome:
        """One POST; a 206 names the items to resend or give up on, by index."""
        ikey = self._poster.instrumentation_key
        response = await self._poster.post([envelope(item, ikey) for item in batch])
        if response.status == 200:
            return SENT
        if response.status == 206:
            return _partial(batch, response.body)
        if response.status == 0 or response.status in RETRYABLE:
            return Outcome(retry=batch, retry_after_s=response.retry_after_s, error=response.error)
        return Outcome(failed=len(batch), error=f"{response.error}: {response.body[:200]!r}")

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._poster.close()


def _partial(batch: list[StoredSpan], body: bytes) -> Outcome:
    try:
        codes = rejected_items(body)
    except ValueError:
        return Outcome(failed=len(batch), error=f"HTTP 206 with an unreadable body {body[:200]!r}")
    retry = [batch[i] for i, code in codes.items() if 0 <= i < len(batch) and code in RETRYABLE]
    failed = sum(1 for i, code in codes.items() if 0 <= i < len(batch) and code not in RETRYABLE)
    return Outcome(retry=retry, failed=failed, error=f"HTTP 206: {len(codes)} items not accepted")
