"""Head sampling per service, with errors of unsampled traces still exported."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from sluice.core.config import TracingSettings
from sluice.core.telemetry.tracing import build_tracer_provider


def test_ratio_zero_exports_only_failed_spans_and_marks_them_sampled() -> None:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(
        "svc", TracingSettings(sample_ratio=0.0), processor=SimpleSpanProcessor(memory)
    )
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("root") as root:
        assert root.is_recording()
        assert not root.get_span_context().trace_flags.sampled
        with tracer.start_as_current_span("failing") as failing:
            failing.set_status(Status(StatusCode.ERROR, "boom"))
        with tracer.start_as_current_span("fine"):
            pass

    [exported] = memory.get_finished_spans()
    assert exported.name == "failing"
    assert exported.context is not None and exported.context.trace_flags.sampled
    assert exported.parent is not None
    assert exported.parent.span_id == root.get_span_context().span_id
    assert exported.status.description == "boom"
    provider.shutdown()


def test_a_child_of_an_unsampled_remote_parent_still_exports_its_error() -> None:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(
        "svc", TracingSettings(sample_ratio=0.0), processor=SimpleSpanProcessor(memory)
    )
    tracer = provider.get_tracer("test")
    parent = propagate.extract(
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
    )
    token = otel_context.attach(parent)
    try:
        with tracer.start_as_current_span("ok"):
            pass
        with tracer.start_as_current_span("server") as span:
            span.set_status(Status(StatusCode.ERROR))
    finally:
        otel_context.detach(token)

    [exported] = memory.get_finished_spans()
    assert exported.name == "server"
    assert exported.context is not None
    assert format(exported.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    provider.shutdown()


def test_without_keep_errors_unsampled_spans_are_not_even_recorded() -> None:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(
        "svc",
        TracingSettings(sample_ratio=0.0, keep_errors=False),
        processor=SimpleSpanProcessor(memory),
    )
    with provider.get_tracer("test").start_as_current_span("root") as root:
        assert not root.is_recording()
        root.set_status(Status(StatusCode.ERROR))
    assert memory.get_finished_spans() == ()
    provider.shutdown()


def test_a_sampled_parent_is_followed_whatever_the_ratio() -> None:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(
        "svc", TracingSettings(sample_ratio=0.0), processor=SimpleSpanProcessor(memory)
    )
    parent = propagate.extract(
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    )
    token = otel_context.attach(parent)
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
