"""Each trace destination against a local receiver of its real wire format.

OTLP/HTTP, Zipkin v2 JSON and Application Insights' track envelopes are validated as
received (tests/unit/telemetry/receivers.py); then the same receivers go slow, return
429/503, or are down (and an OTLP/gRPC receiver answers RESOURCE_EXHAUSTED/UNAVAILABLE,
INVALID_ARGUMENT, or slowly): offering spans never blocks, retries stop at max_attempts and
every span not delivered is counted (sluice_telemetry_forwarded_spans_total).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from sluice.core.config import ConfigError
from sluice.core.telemetry.app_insights import ConnectionString, ConnectionStringError
from sluice.telemetry.forward import ForwardMetrics, build_forwarders
from sluice.telemetry.forward.azure_monitor import duration, envelope
from sluice.telemetry.forward.forwarder import Forwarder
from sluice.telemetry.sampling import StoredSpan
from sluice.telemetry.settings import ForwardSettings
from tests.unit.telemetry.receivers import (
    Receiver,
    Reply,
    otlp_request,
    start_receiver,
    track_envelopes,
    zipkin_spans,
)
from tests.unit.telemetry.spans import stored

IKEY = "11111111-2222-3333-4444-555555555555"
PATHS = {"otlp_http": "/v1/traces", "zipkin": "/api/v2/spans", "azure_monitor": "/v2.1/track"}
CONTENT_TYPES = {
    "otlp_http": "application/x-protobuf",
    "zipkin": "application/json",
    "azure_monitor": "application/json",
}
HTTP_PROTOCOLS = list(PATHS)


def _ok_body(protocol: str) -> bytes:
    if protocol == "azure_monitor":
        return json.dumps({"itemsReceived": 1, "itemsAccepted": 1, "errors": []}).encode()
    return b""


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        await receiver.stop()


async def start(receivers: list[Receiver], protocol: str) -> Receiver:
    receiver = await start_receiver(PATHS[protocol], ok_body=_ok_body(protocol))
    receivers.append(receiver)
    return receiver


def settings_for(
    protocol: str, url: str, monkeypatch: pytest.MonkeyPatch, **fields: Any
) -> ForwardSettings:
    if protocol == "azure_monitor":
        base = url.removesuffix("/v2.1/track")
        monkeypatch.setenv(
            "TEST_AI_CONNECTION", f"InstrumentationKey={IKEY};IngestionEndpoint={base}/"
        )
        return ForwardSettings(
            protocol="azure_monitor", connection_string_env="TEST_AI_CONNECTION", **fields
        )
    return ForwardSettings.model_validate({"protocol": protocol, "endpoint": url, **fields})


def forwarder(settings: ForwardSettings) -> tuple[Forwarder, CollectorRegistry]:
    registry = CollectorRegistry()
    (built,) = build_forwarders([settings], ForwardMetrics(registry))
    return built, registry


def count(registry: CollectorRegistry, name: str, endpoint: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"endpoint": endpoint, **labels})
    return value or 0.0


def sent(registry: CollectorRegistry, settings: ForwardSettings) -> float:
    return count(registry, "sluice_telemetry_forwarded_spans_total", settings.name, result="sent")


async def until(check: Any, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def trace(n: int = 3) -> list[StoredSpan]:
    """A root server span, a client child with an event, and internal children."""
    trace_id = os.urandom(16)
    root = os.urandom(8)
    spans = [
        stored(
            "router",
            trace_id=trace_id,
            span_id=root,
            name="sluice.router.v1.RouterService/Generate",
            kind="server",
            start_ns=1_700_000_000_000_000_000,
            end_ns=1_700_000_000_250_000_000,
            attributes={"rpc.system": "grpc", "rpc.grpc.status_code": 0},
        ),
        stored(
            "router",
            trace_id=trace_id,
            parent=root,
            name="sluice.provider.v1.ProviderService/Stream",
            kind="client",
            start_ns=1_700_000_000_010_000_000,
            end_ns=1_700_000_000_200_000_000,
            error=True,
            attributes={"rpc.system": "grpc", "peer.service": "provider", "tokens": 12},
        ),
    ]
    spans[1].span.events.add(
        time_unix_nano=1_700_000_000_050_000_000, name="first_token"
    ).attributes.add(key="n", value={"int_value": 1})
    for i in range(n - 2):
        spans.append(
            stored(
                "router",
                trace_id=trace_id,
                parent=root,
                name=f"step{i}",
                kind="internal",
                start_ns=1_700_000_000_000_000_000,
                end_ns=1_700_000_000_000_000_000,
            )
        )
    return spans


async def test_otlp_http_posts_the_spans_as_binary_protobuf(
    receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await start(receivers, "otlp_http")
    spans = trace(3)
    settings = settings_for("otlp_http", receiver.url, monkeypatch, headers={"X-Scope-OrgID": "t1"})
    sender, registry = forwarder(settings)
    sender.start()
    sender.offer(spans)
    await until(lambda: sent(registry, settings) == 3)
    await sender.close(1.0)
    headers, body = receiver.requests[0]
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Scope-OrgID"] == "t1"
    request = otlp_request(body)
    got = [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    assert sorted(s.SerializeToString() for s in got) == sorted(
        s.span.SerializeToString() for s in spans
    )
    service = request.resource_spans[0].resource.attributes[0]
    assert (service.key, service.value.string_value) == ("service.name", "router")
    assert (
        count(registry, "sluice_telemetry_forwarded_spans_total", receiver.url, result="sent") == 3
    )


async def test_zipkin_posts_valid_v2_json(
    receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await start(receivers, "zipkin")
    spans = trace(3)
    settings = settings_for("zipkin", receiver.url, monkeypatch)
    sender, registry = forwarder(settings)
    sender.start()
    sender.offer(spans)
    await until(lambda: sent(registry, settings) == 3)
    await sender.close(1.0)
    headers, body = receiver.requests[0]
    assert headers["Content-Type"] == "application/json"
    got = {s["id"]: s for s in zipkin_spans(body)}
    root, client, internal = (got[s.span.span_id.hex()] for s in spans)
    assert root["traceId"] == spans[0].span.trace_id.hex()
    assert root["kind"] == "SERVER" and "parentId" not in root
    assert root["timestamp"] == 1_700_000_000_000_000 and root["duration"] == 250_000
    assert root["localEndpoint"] == {"serviceName": "router"}
    assert root["tags"]["rpc.grpc.status_code"] == "0"
    assert client["kind"] == "CLIENT" and client["parentId"] == root["id"]
    assert client["tags"]["otel.status_code"] == "ERROR" and "error" in client["tags"]
    assert client["tags"]["tokens"] == "12"
    assert client["remoteEndpoint"] == {"serviceName": "provider"}
    assert client["annotations"] == [
        {"timestamp": 1_700_000_000_050_000, "value": '{"first_token":{"n":"1"}}'}
    ]
    assert "kind" not in internal and internal["duration"] == 1  # Zipkin's minimum
    assert (
        count(registry, "sluice_telemetry_forwarded_spans_total", receiver.url, result="sent") == 3
    )


async def test_azure_monitor_posts_track_envelopes(
    receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await start(receivers, "azure_monitor")
    spans = trace(3)
    settings = settings_for("azure_monitor", receiver.url, monkeypatch)
    sender, registry = forwarder(settings)
    sender.start()
    sender.offer(spans)
    await until(lambda: sent(registry, settings) == 3)
    await sender.close(1.0)
    headers, body = receiver.requests[0]
    assert headers["Content-Type"] == "application/json"
    request, dependency, internal = track_envelopes(body)
    trace_hex = spans[0].span.trace_id.hex()
    assert request["name"] == "Microsoft.ApplicationInsights.Request"
    assert request["iKey"] == IKEY
    assert request["time"] == "2023-11-14T22:13:20.000000Z"
    assert request["data"]["baseType"] == "RequestData"
    assert request["data"]["baseData"]["id"] == spans[0].span.span_id.hex()
    assert request["data"]["baseData"]["duration"] == "0.00:00:00.250"
    assert request["data"]["baseData"]["success"] is True
    assert request["tags"]["ai.operation.id"] == trace_hex
    assert request["tags"]["ai.cloud.role"] == "router"
    assert "ai.operation.parentId" not in request["tags"]
    assert dependency["data"]["baseType"] == "RemoteDependencyData"
    assert dependency["data"]["baseData"]["success"] is False
    assert dependency["data"]["baseData"]["target"] == "provider"
    assert dependency["tags"]["ai.operation.id"] == trace_hex
    assert dependency["tags"]["ai.operation.parentId"] == spans[0].span.span_id.hex()
    assert internal["data"]["baseData"]["type"] == "InProc"
    name = settings.name
    assert count(registry, "sluice_telemetry_forwarded_spans_total", name, result="sent") == 3


def test_durations_are_timespans_and_connection_strings_parse(tmp_path: Path) -> None:
    assert duration(90_061_001_000_000) == "1.01:01:01.001"
    assert duration(0) == "0.00:00:00.000"
    parsed = ConnectionString.parse(f"instrumentationkey={IKEY};EndpointSuffix=example.net")
    assert parsed == ConnectionString(IKEY, "https://dc.example.net")
    assert ConnectionString.parse(f"InstrumentationKey={IKEY}").ingestion_endpoint == (
        "https://dc.services.visualstudio.com"
    )
    secret = tmp_path / "cs"
    secret.write_text(f"InstrumentationKey={IKEY};IngestionEndpoint=http://h:1/\n")
    assert ConnectionString.load("", secret) == ConnectionString(IKEY, "http://h:1")
    for bad in ("IngestionEndpoint=http://h", "InstrumentationKey", ""):
        with pytest.raises(ConnectionStringError):
            ConnectionString.parse(bad)
    with pytest.raises(ConnectionStringError, match="cannot read"):
        ConnectionString.load("", tmp_path / "missing")
    with pytest.raises(ConnectionStringError, match="UNSET_VAR_FOR_TEST"):
        ConnectionString.load("UNSET_VAR_FOR_TEST", None)


async def test_a_missing_connection_string_fails_start_up_naming_the_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEST_AI_MISSING", raising=False)
    targets = [
        ForwardSettings(protocol="zipkin", endpoint="http://127.0.0.1:1/api/v2/spans"),
        ForwardSettings(protocol="azure_monitor", connection_string_env="TEST_AI_MISSING"),
    ]
    with pytest.raises(ConfigError, match=r"telemetry\.forward\.1: .*TEST_AI_MISSING"):
        build_forwarders(targets, ForwardMetrics(CollectorRegistry()))


def test_bad_destination_settings_name_the_field() -> None:
    with pytest.raises(ValidationError, match="connection_string_env or connection_string_file"):
        ForwardSettings(protocol="azure_monitor")
    with pytest.raises(ValidationError, match="endpoint is required"):
        ForwardSettings(protocol="zipkin")
    with pytest.raises(ValidationError, match="http"):
        ForwardSettings(protocol="otlp_http", endpoint="tempo:4318")
    with pytest.raises(ValidationError, match="protocol"):
        ForwardSettings.model_validate({"protocol": "jaeger_thrift", "endpoint": "x"})


@pytest.mark.parametrize("protocol", HTTP_PROTOCOLS)
@pytest.mark.parametrize("status", [429, 503])
async def test_throttled_then_accepted_is_retried_and_sent(
    receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch, protocol: str, status: int
) -> None:
    receiver = await start(receivers, protocol)
    receiver.script = [Reply(status, retry_after="0"), Reply(status)]
    settings = settings_for(protocol, receiver.url, monkeypatch, backoff_initial_s=0.01)
    sender, registry = forwarder(settings)
    sender.start()
    sender.offer(trace(3))
    await until(lambda: sent(registry, settings) == 3)
    await sender.close(1.0)
    assert receiver.requests[0][1] == receiver.requests[2][1]  # the same batch again
    name = settings.name
    assert count(registry, "sluice_telemetry_forwarded_spans_total", name, result="sent") == 3
    assert count(registry, "sluice_telemetry_forward_retries_total", name) == 2
    assert count(registry, "sluice_telemetry_forwarded_spans_total", name, result="failed") == 0


@pytest.mark.parametrize("protocol", HTTP_PROTOCOLS)
async def test_retries_stop_at_max_attempts_and_the_spans_count_as_failed(
    receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    receiver = await start(receivers, protocol)
    # A Retry-After of an hour is capped by backoff_max_s: the test would time out if not.
    receiver.default = Reply(503, retry_after="3600")
    settings = settings_for(
        protocol,
        receiver.url,
        monkeypatch,
        max_attempts=3,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    sender, registry = forwarder(settings)
    sender.start()
    sender.offer(trace(4))
    name = settings.name
    await until(
        lambda: count(registry, "sluice_telemetry_forwarded_spans_total", name, result="failed")
    )
    await asyncio.sleep(0.2)
    await sender.close(0.1)
    assert len(receiver.requests) == 3
    assert count(registry, "sluice_telemetry_forwarded_spans_total", name, result="failed") == 4
    assert count(registry, "sluice_telemetry_forwarded_spans_total", name, result="sent") == 0


@pytest.mark.parametrize("protocol", HTTP_PROTOCOLS)
async def test_a_bad_request_is_not_retried(
    receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    receiver = await start(receivers, protocol)
    receiver.default = Reply(400, body=b"bad")
    settings = settings_for(protocol, receiver.url, monkeypatch, backoff_initial_s=0.01)
    sender, registry = forwarder(settings)
    sender.start()
    sender.offer(trace(2))
    name = settings.name
    await until(
        lambda: count(registry, "sluice_telemetry_forwarded_spans_total", name, result="failed")
    )
    await asyncio.sleep(0.1)
    await sender.close(0.1)
    assert len(receiver.requests) == 1
    assert count(registry, "sluice_telemetry_forward_retries_total", name) == 0


@pytest.mark.parametrize("protocol", HTTP_PROTOCOLS)
async def test_a_slow_receiver_times_out_and_offering_never_blocks(
    receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    receiver = await start(receivers, protocol)
    receiver.default = Reply(200, body=_ok_body(protocol), delay_s=5.0)
    settings = settings_for(
        protocol,
        receiver.url,
        monkeypatch,
        timeout_s=0.2,
        max_attempts=2,
        backoff_initial_s=0.01,
        max_buffer_spans=5,
        max_batch_spans=2,
    )
    sender, registry = forwarder(settings)
    sender.start()
    began = time.monotonic()
    for _ in range(10):
        sender.offer(trace(2))
    offering_s = time.monotonic() - began
    name = settings.name
    await until(
        lambda: (
            count(registry, "sluice_telemetry_forwarded_spans_total", name, result="failed") >= 2
        ),
        within_s=3,
    )
    assert time.monotonic() - began < 2.0  # two 0.2 s attempts, not the receiver's 5 s
    await sender.close(0.1)
    assert offering_s < 0.05
    # 20 offered into a buffer of 5: 15 pushed out at once, counted as dropped.
    assert count(registry, "sluice_telemetry_forwarded_spans_total", name, result="dropped") == 15
    assert len(receiver.requests) >= 2


@pytest.mark.parametrize("protocol", HTTP_PROTOCOLS)
async def test_a_receiver_that_is_down_costs_bounded_attempts(
    monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}{PATHS[protocol]}"
    settings = settings_for(
        protocol, url, monkeypatch, max_attempts=3, backoff_initial_s=0.01, timeout_s=0.5
    )
    sender, registry = forwarder(settings)
    sender.start()
    sender.offer(trace(3))
    name = settings.name
    await until(
        lambda: count(registry, "sluice_telemetry_forwarded_spans_total", name, result="failed")
    )
    await sender.close(0.1)
    assert count(registry, "sluice_telemetry_forwarded_spans_total", name, result="failed") == 3
    assert count(registry, "sluice_telemetry_forward_retries_total", name) == 2


async def test_azure_partial_success_resends_only_the_retryable_items(
    receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await start(receivers, "azure_monitor")
    partial = {
        "itemsReceived": 3,
        "itemsAccepted": 1,
        "errors": [
            {"index": 0, "statusCode": 503, "message": "try later"},
            {"index": 2, "statusCode": 400, "message": "bad field"},
        ],
    }
    receiver.script = [Reply(206, body=json.dumps(partial).encode())]
    settings = settings_for("azure_monitor", receiver.url, monkeypatch, backoff_initial_s=0.01)
    sender, registry = forwarder(settings)
    sender.start()
    spans = trace(3)
    sender.offer(spans)
    await until(lambda: sent(registry, settings) == 2)
    await sender.close(1.0)
    (resent,) = track_envelopes(receiver.requests[1][1])
    assert resent["data"]["baseData"]["id"] == spans[0].span.span_id.hex()
    name = settings.name
    assert count(registry, "sluice_telemetry_forwarded_spans_total", name, result="sent") == 2
    assert count(registry, "sluice_telemetry_forwarded_spans_total", name, result="failed") == 1


class ScriptedOtlpServer:
    """An OTLP/gRPC TraceService answering from a script of status codes (OK = None)."""

    def __init__(self, script: list[grpc.StatusCode | None], delay_s: float = 0.0) -> None:
        self.script = script
        self.delay_s = delay_s
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []

    async def export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        code = self.script.pop(0) if self.script else None
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if code is not None:
            await context.abort(code, "scripted")
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def grpc_servers() -> AsyncIterator[list[grpc.aio.Server]]:
    servers: list[grpc.aio.Server] = []
    yield servers
    for server in servers:
        await server.stop(0)


async def serve(servers: list[grpc.aio.Server], scripted: ScriptedOtlpServer) -> str:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        scripted.export,
        request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
        response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servers.append(server)
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE])
async def test_otlp_grpc_throttled_then_accepted_is_retried_and_sent(
    grpc_servers: list[grpc.aio.Server], code: grpc.StatusCode
) -> None:
    scripted = ScriptedOtlpServer([code, code])
    endpoint = await serve(grpc_servers, scripted)
    settings = ForwardSettings(
        endpoint=endpoint, backoff_initial_s=0.01, headers={"X-Scope-OrgID": "tenant-1"}
    )
    sender, registry = forwarder(settings)
    sender.start()
    sender.offer(trace(3))
    await until(
        lambda: count(registry, "sluice_telemetry_forwarded_spans_total", endpoint, result="sent")
    )
    await sender.close(1.0)
    assert len(scripted.requests) == 3
    assert all(m["x-scope-orgid"] == "tenant-1" for m in scripted.metadata)
    assert count(registry, "sluice_telemetry_forwarded_spans_total", endpoint, result="sent") == 3
    assert count(registry, "sluice_telemetry_forward_retries_total", endpoint) == 2


async def test_otlp_grpc_bad_argument_is_final_and_slow_is_bounded(
    grpc_servers: list[grpc.aio.Server],
) -> None:
    scripted = ScriptedOtlpServer([grpc.StatusCode.INVALID_ARGUMENT])
    endpoint = await serve(grpc_servers, scripted)
    sender, registry = forwarder(ForwardSettings(endpoint=endpoint, backoff_initial_s=0.01))
    sender.start()
    sender.offer(trace(2))
    await until(
        lambda: count(registry, "sluice_telemetry_forwarded_spans_total", endpoint, result="failed")
    )
    await sender.close(0.1)
    assert len(scripted.requests) == 1

    slow = ScriptedOtlpServer([], delay_s=5.0)
    endpoint = await serve(grpc_servers, slow)
    settings = ForwardSettings(
        endpoint=endpoint, timeout_s=0.2, max_attempts=2, backoff_initial_s=0.01
    )
    sender, registry = forwarder(settings)
    sender.start()
    began = time.monotonic()
    sender.offer(trace(2))
    await until(
        lambda: (
            count(registry, "sluice_telemetry_forwarded_spans_total", endpoint, result="failed")
            == 2
        ),
        within_s=3,
    )
    assert time.monotonic() - began < 2.0
    await sender.close(0.1)
    assert len(slow.requests) == 2


# What azure-monitor-opentelemetry-exporter 1.0.0b58 POSTed to a local ingestion endpoint
# for a SERVER span and its CLIENT child (captured once from the real exporter; it is not a
# dependency: see services/sluice/telemetry/forward/azure_monitor.py for why).
EXPORTER_ENVELOPES = [
    {
        "name": "Microsoft.ApplicationInsights.RemoteDependency",
        "iKey": IKEY,
        "tags": {
            "ai.device.id": "vm",
            "ai.device.locale": "en_US",
            "ai.device.type": "Other",
            "ai.internal.sdkVersion": "ulm_py3.11.7:otel1.45.2:ext1.0.0b58",
            "ai.cloud.role": "unknown_service:python",
            "ai.cloud.roleInstance": "90317c3a-24b7-4152-ac1c-a09d52c1b7b8",
            "ai.internal.nodeName": "90317c3a-24b7-4152-ac1c-a09d52c1b7b8",
            "ai.operation.id": "32d123a00b68ff6a3da5dd783c86bea8",
            "ai.operation.parentId": "439b64c123b90808",
            "ai.operation.name": "cli",
        },
        "time": "2026-12-07T12:33:05.092900Z",
        "data": {
            "baseData": {
                "ver": 2,
                "name": "cli",
                "id": "14e25fd2b659265a",
                "resultCode": "0",
                "duration": "0.00:00:00.000",
                "success": True,
                "properties": {},
                "measurements": {},
                "type": "N/A",
            },
            "baseType": "RemoteDependencyData",
        },
    },
    {
        "name": "Microsoft.ApplicationInsights.Request",
        "iKey": IKEY,
        "tags": {
            "ai.device.id": "vm",
            "ai.device.locale": "en_US",
            "ai.device.type": "Other",
            "ai.internal.sdkVersion": "ulm_py3.11.7:otel1.45.2:ext1.0.0b58",
            "ai.cloud.role": "unknown_service:python",
            "ai.cloud.roleInstance": "90317c3a-24b7-4152-ac1c-a09d52c1b7b8",
            "ai.internal.nodeName": "90317c3a-24b7-4152-ac1c-a09d52c1b7b8",
            "ai.operation.id": "32d123a00b68ff6a3da5dd783c86bea8",
            "ai.operation.name": "srv",
        },
        "time": "2026-12-07T12:33:05.092852Z",
        "data": {
            "baseData": {
                "ver": 2,
                "name": "srv",
                "id": "439b64c123b90808",
                "duration": "0.00:00:00.033",
                "responseCode": "0",
                "success": True,
                "properties": {},
                "measurements": {},
            },
            "baseType": "RequestData",
        },
    },
]


def test_our_envelopes_have_the_shape_the_azure_exporter_sends() -> None:
    # The receiver's schema accepts what the real exporter sends...
    exporter_dependency, exporter_request = track_envelopes(json.dumps(EXPORTER_ENVELOPES).encode())
    # ...and ours match it key for key where it matters for ingestion and linking.
    spans = trace(2)
    wire = json.dumps([envelope(span, IKEY) for span in spans]).encode()
    ours = {e["data"]["baseType"]: e for e in track_envelopes(wire)}
    for theirs in (exporter_request, exporter_dependency):
        mine = ours[theirs["data"]["baseType"]]
        assert set(mine) == set(theirs)
        assert mine["name"] == theirs["name"]
        assert set(mine["data"]) == set(theirs["data"])
        required = set(theirs["data"]["baseData"]) - {"measurements"}
        assert required <= set(mine["data"]["baseData"])
        linking = {"ai.operation.id", "ai.cloud.role", "ai.cloud.roleInstance"}
        assert linking <= set(mine["tags"]) & set(theirs["tags"])
        assert ("ai.operation.parentId" in mine["tags"]) == (
            "ai.operation.parentId" in theirs["tags"]
        )
