"""Zipkin destination: spans encoded as Zipkin's v2 JSON and POSTed to /api/v2/spans.

The mapping follows OpenTelemetry's "Zipkin exporter" specification (the same one
`opentelemetry-exporter-zipkin-json` implements for SDK spans; ours start from OTLP
protobuf, so it is encoded here): kind SERVER/CLIENT/PRODUCER/CONSUMER (none for
internal), microsecond timestamp and duration, the resource's service.name as
localEndpoint, attributes as string tags, events as annotations, the status as the
`otel.status_code` and `error` tags, the scope as `otel.scope.name`/`.version`.
"""

from __future__ import annotations

import json

from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace

from sluice.core.telemetry.http_post import HttpPoster
from sluice.telemetry.forward.forwarder import SENT, Outcome
from sluice.telemetry.forward.otlp import Value, attributes
from sluice.telemetry.sampling import StoredSpan

KINDS = {
    otlp_trace.Span.SPAN_KIND_SERVER: "SERVER",
    otlp_trace.Span.SPAN_KIND_CLIENT: "CLIENT",
    otlp_trace.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    otlp_trace.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
STATUS = {otlp_trace.Status.STATUS_CODE_OK: "OK", otlp_trace.Status.STATUS_CODE_ERROR: "ERROR"}
RETRYABLE_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def _tag(value: Value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, separators=(",", ":"), default=str)


def zipkin_span(item: StoredSpan) -> dict[str, object]:
    """One span in Zipkin's v2 model (zipkin-api's zipkin2-api.yaml, `Span`)."""
    span = item.span
    start_us = span.start_time_unix_nano // 1000
    result: dict[str, object] = {
        "traceId": span.trace_id.hex(),
        "id": span.span_id.hex(),
        "name": span.name,
        "timestamp": start_us,
        "duration": max(1, span.end_time_unix_nano // 1000 - start_us),
        "localEndpoint": {"serviceName": item.service_name},
    }
    if span.parent_span_id:
        result["parentId"] = span.parent_span_id.hex()
    if span.kind in KINDS:
        result["kind"] = KINDS[span.kind]
    values = attributes(list(span.attributes))
    tags = {key: _tag(value) for key, value in values.items() if value is not None}
    if item.scope.name:
        tags["otel.scope.name"] = item.scope.name
    if item.scope.version:
        tags["otel.scope.version"] = item.scope.version
    if span.status.code in STATUS:
        tags["otel.status_code"] = STATUS[span.status.code]
        if span.status.code == otlp_trace.Status.STATUS_CODE_ERROR:
            tags["error"] = span.status.message
    if tags:
        result["tags"] = tags
    remote = _remote_endpoint(values)
    if remote:
        result["remoteEndpoint"] = remote
    if span.events:
        result["annotations"] = [
            {"timestamp": event.time_unix_nano // 1000, "value": _annotation(event)}
            for event in span.events
        ]
    return result


def _annotation(event: otlp_trace.Span.Event) -> str:
    # The specification's form: the bare name, or {"name": {attributes}} as JSON text.
    if not event.attributes:
        return event.name
    values = {k: _tag(v) for k, v in attributes(list(event.attributes)).items()}
    return json.dumps({event.name: values}, separators=(",", ":"))


def _remote_endpoint(values: dict[str, Value]) -> dict[str, object]:
    remote: dict[str, object] = {}
    peer = values.get("peer.service")
    if isinstance(peer, str):
        remote["serviceName"] = peer
    port = values.get("server.port", values.get("net.peer.port"))
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        remote["port"] = port
    return remote


def encode(batch: list[StoredSpan]) -> bytes:
    """A POST body for /api/v2/spans: a JSON list of v2 spans."""
    return json.dumps([zipkin_span(item) for item in batch], separators=(",", ":")).encode()


class ZipkinSink:
    """Zipkin v2 JSON over HTTP POST (Zipkin answers 202 Accepted)."""

    def __init__(self, url: str, *, timeout_s: float, headers: dict[str, str]) -> None:
        self._poster = HttpPoster(url, timeout_s=timeout_s, headers=headers)

    async def send(self, batch: list[StoredSpan]) -> Outcome:
        """One POST of the whole batch."""
        response = await self._poster.post(encode(batch), "application/json")
        if 200 <= response.status < 300:
            return SENT
        if response.status == 0 or response.status in RETRYABLE_HTTP:
            return Outcome(retry=batch, retry_after_s=response.retry_after_s, error=response.error)
        return Outcome(failed=len(batch), error=f"{response.error}: {response.body[:200]!r}")

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._poster.close()
