"""Head sampling per service; failed RPC spans of unsampled traces still exported."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from sluice.core.config import MIN_SAMPLING_RATIO, TracingSettings
from sluice.core.telemetry.grpc_server import ServerSpan
from sluice.core.telemetry.tracing import (
    SAMPLING_RATIO,
    build_tracer_provider,
    failed_spans_of,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"
METHOD = "/sluice.router.v1.RouterService/Generate"


def unsampled(trace_flags: str = "00") -> list[tuple[str, str]]:
    return [("traceparent", f"00-{TRACE}-{CALLER}-{trace_flags}")]


def test_an_unsampled_server_span_that_fails_is_exported_rebuilt_and_parented() -> None:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(
        "svc", TracingSettings(sample_ratio=0.0), processor=SimpleSpanProcessor(memory)
    )
    server = ServerSpan(provider.get_tracer("test"), METHOD, unsampled(), failed_spans_of(provider))
    assert not server.span.is_recording()  # nothing is built while the call runs
    server.finish(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "SERVICE_UNAVAILABLE")

    [exported] = memory.get_finished_spans()
    assert (exported.name, exported.kind) == (METHOD, SpanKind.SERVER)
    assert exported.context is not None and exported.context.trace_flags.sampled
    assert exported.context.span_id == server.span.get_span_context().span_id
    assert format(exported.context.trace_id, "032x") == TRACE
    assert exported.parent is not None and format(exported.parent.span_id, "016x") == CALLER
    assert exported.status.status_code == StatusCode.ERROR
    assert dict(exported.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "sluice.router.v1.RouterService",
        "rpc.method": "Generate",
        "rpc.grpc.status_code": grpc.StatusCode.UNAVAILABLE.value[0],
        "error.type": "SERVICE_UNAVAILABLE",
        "sluice.sampling.ratio": 1.0,  # exported whatever the ratio: counts once
    }
    assert exported.start_time is not None and exported.end_time is not None
    assert exported.end_time >= exported.start_time
    assert exported.resource.attributes["service.name"] == "svc"
    provider.shutdown()


def test_unsampled_calls_that_succeed_or_fail_on_the_callers_side_export_nothing() -> None:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(
        "svc", TracingSettings(sample_ratio=0.0), processor=SimpleSpanProcessor(memory)
    )
    tracer, failed = provider.get_tracer("test"), failed_spans_of(provider)
    ServerSpan(tracer, METHOD, unsampled(), failed).finish(grpc.StatusCode.OK, "OK", None)
    ServerSpan(tracer, METHOD, [], failed).finish(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "VALIDATION_ERROR"
    )
    assert memory.get_finished_spans() == ()
    provider.shutdown()


def test_without_keep_errors_or_at_ratio_one_there_is_no_rebuilding() -> None:
    for settings in (
        TracingSettings(sample_ratio=0.0, keep_errors=False),
        TracingSettings(sample_ratio=1.0),
    ):
        provider = build_tracer_provider(
            "svc", settings, processor=SimpleSpanProcessor(InMemorySpanExporter())
        )
        assert failed_spans_of(provider) is None
        provider.shutdown()


def test_a_sampled_parent_is_followed_whatever_the_ratio() -> None:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(
        "svc", TracingSettings(sample_ratio=0.0), processor=SimpleSpanProcessor(memory)
    )
    token = otel_context.attach(propagate.extract({"traceparent": unsampled("01")[0][1]}))
    try:
        with provider.get_tracer("test").start_as_current_span("child"):
            pass
    finally:
        otel_context.detach(token)
    assert [s.name for s in memory.get_finished_spans()] == ["child"]
    provider.shutdown()


def test_ratio_one_exports_everything() -> None:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(
        "svc", TracingSettings(sample_ratio=1.0), processor=SimpleSpanProcessor(memory)
    )
    tracer = provider.get_tracer("test")
    for index in range(5):
        with tracer.start_as_current_span(f"s{index}"):
            pass
    assert len(memory.get_finished_spans()) == 5
    provider.shutdown()


def _provider(ratio: float, **fields: bool) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(
        "svc",
        TracingSettings(sample_ratio=ratio, **fields),
        processor=SimpleSpanProcessor(memory),
    )
    return provider, memory


def _spans_under(ratio: float, carrier: dict[str, str]) -> list[ReadableSpan]:
    """A parent and a child span under the context the carrier propagates."""
    provider, memory = _provider(ratio)
    token = otel_context.attach(propagate.extract(carrier))
    try:
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("parent"), tracer.start_as_current_span("child"):
            pass
    finally:
        otel_context.detach(token)
    provider.shutdown()
    return list(memory.get_finished_spans())


def _ratios(spans: list[ReadableSpan]) -> list[object]:
    return [(s.attributes or {}).get(SAMPLING_RATIO) for s in spans]


def _states(spans: list[ReadableSpan]) -> list[str | None]:
    return [s.context.trace_state.get("sluice") if s.context else None for s in spans]


def test_sampled_spans_carry_the_ratio_their_trace_was_kept_with() -> None:
    # A root decided here: this service's ratio, handed on in tracestate.
    roots: list[ReadableSpan] = []
    for _ in range(40):
        roots = _spans_under(0.5, {})
        if roots:
            break
    assert _ratios(roots) == [0.5, 0.5]
    assert _states(roots) == ["r:0.5", "r:0.5"]

    # A parent from another service that sampled at 0.25: its ratio, not ours.
    spans = _spans_under(
        0.5, {"traceparent": unsampled("01")[0][1], "tracestate": "sluice=r:0.25,x=y"}
    )
    assert _ratios(spans) == [0.25, 0.25]

    # A sampled parent that says nothing (Envoy) or nonsense: this service's ratio, and
    # from here on the entry says so.
    for state in ("", "sluice=bogus", "sluice=r:7"):
        spans = _spans_under(0.5, {"traceparent": unsampled("01")[0][1], "tracestate": state})
        assert _ratios(spans) == [0.5, 0.5], state
        assert _states(spans) == ["r:0.5", "r:0.5"], state


def test_a_sampled_server_span_that_fails_counts_once_when_errors_are_kept() -> None:
    sampled = [("traceparent", f"00-{TRACE}-{CALLER}-01"), ("tracestate", "sluice=r:0.1")]
    for keep_errors, expected in ((True, 1.0), (False, 0.1)):
        provider, memory = _provider(0.1, keep_errors=keep_errors)
        tracer = provider.get_tracer("test")
        ServerSpan(tracer, METHOD, sampled, failed_spans_of(provider)).finish(
            grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", None
        )
        ServerSpan(tracer, METHOD, sampled, failed_spans_of(provider)).finish(
            grpc.StatusCode.OK, "OK", None
        )
        assert _ratios(list(memory.get_finished_spans())) == [expected, 0.1]
        provider.shutdown()


def test_a_carried_ratio_from_a_client_is_clamped_or_ignored() -> None:
    # Issue 16 item 2: the tracestate entry comes from clients too, and statistics weight
    # a span by 1/ratio; an absurd ratio is raised to the floor and handed on so, and a
    # non-finite, zero or negative one is replaced by this service's own.
    parent = unsampled("01")[0][1]
    for claimed in ("r:1e-300", "r:5e-324", "r:0.00001"):
        spans = _spans_under(0.5, {"traceparent": parent, "tracestate": f"sluice={claimed}"})
        assert _ratios(spans) == [MIN_SAMPLING_RATIO] * 2, claimed
        assert _states(spans) == ["r:0.0001"] * 2, claimed
    for claimed in ("r:0", "r:-1", "r:nan", "r:inf", "r:-inf", "r:1e400"):
        spans = _spans_under(0.5, {"traceparent": parent, "tracestate": f"sluice={claimed}"})
        assert _ratios(spans) == [0.5, 0.5], claimed
        assert _states(spans) == ["r:0.5", "r:0.5"], claimed


def test_a_configured_ratio_below_the_floor_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least"):
        TracingSettings(sample_ratio=1e-6)
    assert TracingSettings(sample_ratio=0.0).sample_ratio == 0.0
    assert TracingSettings(sample_ratio=MIN_SAMPLING_RATIO).sample_ratio == MIN_SAMPLING_RATIO
