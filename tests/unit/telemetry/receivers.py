"""Local receivers of the trace destinations' wire formats, for forwarding tests.

Each is a real aiohttp server on a free loopback port that records every request and
answers from a script (status, Retry-After, delay), so a test can make it slow or
return 429/503 for a while. The validators check the real formats: Zipkin's v2 JSON
(the `Span` model of zipkin-api's zipkin2-api.yaml, as a JSON Schema), Application
Insights' track envelope (the Bond schemas of RequestData/RemoteDependencyData, and
MetricData for the metrics push), and
OTLP/HTTP's binary protobuf ExportTraceServiceRequest.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

HEX16 = "^[0-9a-f]{16}$"
ZIPKIN_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "serviceName": {"type": "string"},
        "ipv4": {"type": "string"},
        "ipv6": {"type": "string"},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    },
}
ZIPKIN_SPANS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["traceId", "id"],
        "additionalProperties": False,
        "properties": {
            "traceId": {"type": "string", "pattern": "^[0-9a-f]{16}([0-9a-f]{16})?$"},
            "name": {"type": "string"},
            "parentId": {"type": "string", "pattern": HEX16},
            "id": {"type": "string", "pattern": HEX16},
            "kind": {"enum": ["CLIENT", "SERVER", "PRODUCER", "CONSUMER"]},
            "timestamp": {"type": "integer", "minimum": 1},
            "duration": {"type": "integer", "minimum": 1},
            "debug": {"type": "boolean"},
            "shared": {"type": "boolean"},
            "localEndpoint": ZIPKIN_ENDPOINT,
            "remoteEndpoint": ZIPKIN_ENDPOINT,
            "annotations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["timestamp", "value"],
                    "additionalProperties": False,
                    "properties": {
                        "timestamp": {"type": "integer", "minimum": 1},
                        "value": {"type": "string"},
                    },
                },
            },
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}
DURATION = r"^\d+\.\d{2}:\d{2}:\d{2}\.\d{3,7}$"
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
REQUEST_DATA = {
    "type": "object",
    "required": ["ver", "id", "duration", "responseCode", "success"],
    "properties": {
        "ver": {"const": 2},
        "id": {"type": "string", "minLength": 1},
        "name": {"type": "string", "maxLength": 1024},
        "duration": {"type": "string", "pattern": DURATION},
        "responseCode": {"type": "string", "maxLength": 1024},
        "success": {"type": "boolean"},
        "url": {"type": "string"},
        "source": {"type": "string"},
        "properties": STRINGS,
        "measurements": {"type": "object", "additionalProperties": {"type": "number"}},
    },
    "additionalProperties": False,
}
DEPENDENCY_DATA = {
    "type": "object",
    "required": ["ver", "name", "duration"],
    "properties": {
        "ver": {"const": 2},
        "name": {"type": "string", "minLength": 1, "maxLength": 1024},
        "id": {"type": "string"},
        "resultCode": {"type": "string", "maxLength": 1024},
        "duration": {"type": "string", "pattern": DURATION},
        "success": {"type": "boolean"},
        "data": {"type": "string"},
        "target": {"type": "string"},
        "type": {"type": "string"},
        "properties": STRINGS,
        "measurements": {"type": "object", "additionalProperties": {"type": "number"}},
    },
    "additionalProperties": False,
}
METRIC_DATA = {
    "type": "object",
    "required": ["ver", "metrics"],
    "properties": {
        "ver": {"const": 2},
        "metrics": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "value"],
                "properties": {
                    "ns": {"type": "string", "maxLength": 256},
                    "name": {"type": "string", "minLength": 1, "maxLength": 150},
                    "kind": {"enum": ["Measurement", "Aggregation"]},
                    "value": {"type": "number"},
                    "count": {"type": "integer", "minimum": 1},
                    "min": {"type": "number"},
                    "max": {"type": "number"},
                    "stdDev": {"type": "number"},
                },
                "additionalProperties": False,
            },
        },
        "properties": STRINGS,
    },
    "additionalProperties": False,
}


def _envelopes(name: dict[str, Any], data: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A JSON array of track envelopes named by `name`, carrying one of `data`."""
    return {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "time", "iKey", "tags", "data"],
            "properties": {
                "ver": {"type": "integer"},
                "name": name,
                "time": {
                    "type": "string",
                    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?Z$",
                },
                "sampleRate": {"type": "number"},
                "iKey": {"type": "string", "minLength": 1},
                "tags": STRINGS,
                "data": {
                    "type": "object",
                    "required": ["baseType", "baseData"],
                    "properties": {"baseType": {}, "baseData": {}},
                    "additionalProperties": False,
                    "oneOf": [
                        {"properties": {"baseType": {"const": base_type}, "baseData": schema}}
                        for base_type, schema in data
                    ],
                },
            },
            "additionalProperties": False,
        },
    }


TRACK_ENVELOPES = _envelopes(
    {
        "enum": [
            "Microsoft.ApplicationInsights.Request",
            "Microsoft.ApplicationInsights.RemoteDependency",
        ]
    },
    [("RequestData", REQUEST_DATA), ("RemoteDependencyData", DEPENDENCY_DATA)],
)
# The classic SDKs' metric envelope name carries the instrumentation key without dashes.
METRIC_ENVELOPES = _envelopes(
    {"type": "string", "pattern": r"^Microsoft\.ApplicationInsights\.[0-9a-f]{32}\.Metric$"},
    [("MetricData", METRIC_DATA)],
)


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = b""
    retry_after: str | None = None
    delay_s: float = 0.0


@dataclass
class Receiver:
    """A running receiver: its URL and what it got."""

    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    script: list[Reply] = field(default_factory=list)
    default: Reply = field(default_factory=Reply)
    runner: web.AppRunner | None = None

    def reply(self) -> Reply:
        return self.script.pop(0) if self.script else self.default

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def start_receiver(path: str, *, ok_body: bytes = b"") -> Receiver:
    """Serve POST `path` on 127.0.0.1:<free port>, recording and answering per script."""
    receiver = Receiver(url="")
    receiver.default = Reply(body=ok_body)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        receiver.requests.append((dict(request.headers), body))
        reply = receiver.reply()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        headers = {"Retry-After": reply.retry_after} if reply.retry_after else {}
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    app = web.Application()
    app.router.add_post(path, handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}{path}"
    receiver.runner = runner
    return receiver


def zipkin_spans(body: bytes) -> list[dict[str, Any]]:
    """Spans of a Zipkin POST, validated against the v2 model."""
    spans = json.loads(body)
    jsonschema.validate(spans, ZIPKIN_SPANS)
    return list(spans)


def track_envelopes(body: bytes) -> list[dict[str, Any]]:
    """Envelopes of an Application Insights track POST, validated."""
    envelopes = json.loads(body)
    jsonschema.validate(envelopes, TRACK_ENVELOPES)
    return list(envelopes)


def metric_envelopes(body: bytes) -> list[dict[str, Any]]:
    """Envelopes of an Application Insights metrics POST, validated."""
    envelopes = json.loads(body)
    jsonschema.validate(envelopes, METRIC_ENVELOPES)
    return list(envelopes)


def otlp_request(body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """An OTLP/HTTP body decoded as binary protobuf (fails on anything else)."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request
