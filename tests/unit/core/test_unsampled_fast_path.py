"""The unsampled fast path gives what the OpenTelemetry SDK's path would, only cheaper."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from sluice.core.telemetry.grpc_client import ClientSpans
from sluice.core.telemetry.grpc_server import ServerSpan
from sluice.core.telemetry.tracing import FailedSpans
from sluice.core.telemetry.unsampled import traceparent_headers, unsampled_remote_parent

TRACE, SPAN = os.urandom(16).hex(), os.urandom(8).hex()


def tracer_and_export() -> tuple[trace.Tracer, InMemorySpanExporter, FailedSpans]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(processor)
    return provider.get_tracer("test"), exporter, FailedSpans(processor, Resource.create({}))


@pytest.mark.parametrize("value", [f"00-{TRACE}-{SPAN}-00", f"00-{TRACE}-{SPAN}-00".encode()])
def test_an_unsampled_traceparent_is_read(value: str | bytes) -> None:
    found = unsampled_remote_parent([("traceparent", value), ("tracestate", "a=1")])
    assert found is not None
    assert (found.trace_id, found.span_id) == (int(TRACE, 16), int(SPAN, 16))
    assert not found.trace_flags.sampled and found.is_remote
    assert found.trace_state.to_header() == "a=1"


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("x-request-id", "r")],
        [("traceparent", f"00-{TRACE}-{SPAN}-01")],  # sampled: the SDK records it
        [("traceparent", f"00-{TRACE}-{SPAN}-00"), ("baggage", "k=v")],  # SDK carries it
        [("traceparent", f"01-{TRACE}-{SPAN}-00")],  # unknown version
        [("traceparent", f"00-{'0' * 32}-{SPAN}-00")],  # invalid trace id
        [("traceparent", f"00-{TRACE}-{'0' * 16}-00")],  # invalid span id
        [("traceparent", f"00-{TRACE[:-1]}x-{SPAN}-00")],  # not hex
        [("traceparent", "garbage")],
        [("traceparent", f"00-{TRACE[:20]}-{TRACE[21:]}-{SPAN}-00")],  # five fields
        [("traceparent", f"00-{TRACE}{SPAN[:2]}-{SPAN[2:]}-00")],  # fields misplaced
        [("traceparent", f"00-{TRACE}-{SPAN}-0x")],  # flags not hex
    ],
)
def test_anything_else_takes_the_sdk_path(metadata: list[tuple[str, str]]) -> None:
    assert unsampled_remote_parent(metadata) is None


def test_server_span_of_an_unsampled_caller_joins_its_trace_unrecorded() -> None:
    tracer, exporter, failed = tracer_and_export()
    span = ServerSpan(tracer, "/a.v1.S/M", [("traceparent", f"00-{TRACE}-{SPAN}-00")], failed)
    current = trace.get_current_span().get_span_context()
    span.finish(grpc.StatusCode.OK, "OK", None)

    assert not span.span.is_recording()
    assert current.trace_id == int(TRACE, 16) and current.span_id != int(SPAN, 16)
    assert not current.trace_flags.sampled
    assert exporter.get_finished_spans() == ()
    assert not trace.get_current_span().get_span_context().is_valid  # detached again


def test_a_failed_unsampled_server_span_is_still_exported_with_its_parent() -> None:
    tracer, exporter, failed = tracer_and_export()
    span = ServerSpan(tracer, "/a.v1.S/M", [("traceparent", f"00-{TRACE}-{SPAN}-00")], failed)
    span.finish(grpc.StatusCode.UNAVAILABLE, "down", "SERVICE_UNAVAILABLE")

    (exported,) = exporter.get_finished_spans()
    assert exported.context is not None and exported.parent is not None
    assert exported.context.trace_id == int(TRACE, 16)
    assert exported.parent.span_id == int(SPAN, 16)
    assert exported.attributes is not None
    assert exported.attributes["error.type"] == "SERVICE_UNAVAILABLE"


def test_sampled_callers_still_get_recorded_spans() -> None:
    tracer, exporter, failed = tracer_and_export()
    span = ServerSpan(tracer, "/a.v1.S/M", [("traceparent", f"00-{TRACE}-{SPAN}-01")], failed)
    span.finish(grpc.StatusCode.OK, "OK", None)

    (recorded,) = exporter.get_finished_spans()
    assert isinstance(recorded, ReadableSpan) and recorded.parent is not None
    assert recorded.parent.span_id == int(SPAN, 16)


class _FailingCall:
    """A finished grpc.aio call as the client span's done callback sees it."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    async def code(self) -> grpc.StatusCode:
        return self._code

    def add_done_callback(self, callback: Any) -> None:
        callback(self)


async def test_client_calls_in_an_unsampled_trace_send_a_child_traceparent() -> None:
    tracer, exporter, failed = tracer_and_export()
    server = ServerSpan(tracer, "/a.v1.S/M", [("traceparent", f"00-{TRACE}-{SPAN}-00")], failed)
    own = trace.get_current_span().get_span_context()
    spans = ClientSpans(tracer, failed)

    child, metadata, pending = spans.begin("/b.v1.T/N", [("x-request-id", "r")])
    sent = dict(metadata)
    spans.watch(_FailingCall(grpc.StatusCode.UNAVAILABLE), child, pending)
    server.finish(grpc.StatusCode.OK, "OK", None)
    await asyncio.sleep(0)

    assert sent["x-request-id"] == "r"
    version, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "00")
    assert span_id == f"{child.get_span_context().span_id:016x}" != f"{own.span_id:016x}"
    # The failed call is exported, parented under this service's own (unrecorded) span.
    (exported,) = exporter.get_finished_spans()
    assert exported.name == "/b.v1.T/N" and exported.parent is not None
    assert exported.parent.span_id == own.span_id


def test_traceparent_headers_round_trip() -> None:
    parent = unsampled_remote_parent([("traceparent", f"00-{TRACE}-{SPAN}-00")])
    assert parent is not None
    assert traceparent_headers(parent) == [("traceparent", f"00-{TRACE}-{SPAN}-00")]


async def test_client_calls_carrying_baggage_take_the_sdk_path() -> None:
    tracer, _, failed = tracer_and_export()
    server = ServerSpan(tracer, "/a.v1.S/M", [("traceparent", f"00-{TRACE}-{SPAN}-00")], failed)
    token = context.attach(baggage.set_baggage("tenant", "t1"))
    try:
        _, metadata, _ = ClientSpans(tracer, failed).begin("/b.v1.T/N", [])
    finally:
        context.detach(token)
        server.finish(grpc.StatusCode.OK, "OK", None)

    sent = dict(metadata)
    assert sent["baggage"] == "tenant=t1"
    assert sent["traceparent"].startswith(f"00-{TRACE}-") and sent["traceparent"].endswith("-00")
