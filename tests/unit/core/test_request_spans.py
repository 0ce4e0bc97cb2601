"""core.telemetry.spans: in-request spans only inside sampled traces, outcomes recorded."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import SpanKind, StatusCode

from sluice.core.resilience.bulkhead import Bulkhead, BulkheadFullError, BulkheadSettings
from sluice.core.telemetry.spans import RequestSpans, record_event


def rig(sampler: Sampler = ALWAYS_ON) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


def test_children_nest_under_the_current_span_and_the_cache_span() -> None:
    provider, exporter = rig()
    tracer = provider.get_tracer("test")
    spans = RequestSpans(tracer)
    with tracer.start_as_current_span("request") as request:
        with spans.queue_wait("admission", {"sluice.priority": "normal"}):
            pass
        with spans.cache("get", "redis") as cache, spans.redis(("127.0.0.1", 6379), "GET", 2):
            cache.set_attribute("sluice.cache.hit", True)
    root = request.get_span_context().span_id
    wait, get, command = (named(exporter, n) for n in ("queue_wait admission", "cache get", "GET"))
    assert wait.parent is not None and wait.parent.span_id == root
    assert wait.kind == SpanKind.INTERNAL
    assert dict(wait.attributes or {}) == {
        "sluice.queue.name": "admission",
        "sluice.priority": "normal",
    }
    assert get.parent is not None and get.parent.span_id == root
    assert (get.attributes or {})["sluice.cache.hit"] is True
    assert command.parent is not None and command.parent.span_id == get.context.span_id
    assert command.kind == SpanKind.CLIENT
    attributes = dict(command.attributes or {})
    assert attributes["db.system"] == attributes["db.system.name"] == "redis"
    assert attributes["db.operation"] == attributes["db.operation.name"] == "GET"
    assert (attributes["db.namespace"], attributes["server.port"]) == ("2", 6379)


class RecordOnly(Sampler):
    """Records without sampling: a recording span that will not be exported."""

    def should_sample(self, *args: object, **kwargs: object) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY)

    def get_description(self) -> str:
        return "RecordOnly"


@pytest.mark.parametrize("sampler", [RecordOnly(), ALWAYS_OFF])
def test_nothing_is_recorded_in_an_unsampled_trace(sampler: Sampler) -> None:
    provider, exporter = rig(sampler)
    tracer = provider.get_tracer("test")
    spans = RequestSpans(tracer)
    with tracer.start_as_current_span("request"):
        with spans.queue_wait("bulkhead") as wait:
            assert not wait.is_recording()
        with spans.redis(("h", 1), "SET") as command:
            assert not command.is_recording()
    assert [s.name for s in exporter.get_finished_spans()] == []


def test_no_tracer_and_no_current_span_record_nothing() -> None:
    provider, exporter = rig()
    with RequestSpans(None).cache("put", "memory") as span:
        assert not span.is_recording()
    with RequestSpans(provider.get_tracer("test")).cache("put", "memory") as span:
        assert not span.is_recording()  # outside any request
    assert exporter.get_finished_spans() == ()


async def test_a_refused_wait_records_its_outcome_and_a_bug_marks_the_span_failed() -> None:
    provider, exporter = rig()
    tracer = provider.get_tracer("test")
    spans = RequestSpans(tracer)
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=1, max_waiting=0))
    refusals: dict[type[BaseException], str] = {BulkheadFullError: "rejected"}
    with tracer.start_as_current_span("request"):
        async with bulkhead.slot(spans.queue_wait("first", refusals=refusals)):
            with pytest.raises(BulkheadFullError):
                async with bulkhead.slot(spans.queue_wait("second", refusals=refusals)):
                    pass
        with pytest.raises(RuntimeError), spans.queue_wait("buggy"):
            raise RuntimeError("boom")
    first, second = named(exporter, "queue_wait first"), named(exporter, "queue_wait second")
    assert first.status.status_code == StatusCode.UNSET
    assert "sluice.outcome" not in (first.attributes or {})
    assert (second.attributes or {})["sluice.outcome"] == "rejected"
    assert second.status.status_code == StatusCode.UNSET
    buggy = named(exporter, "queue_wait buggy")
    assert buggy.status.status_code == StatusCode.ERROR
    assert (buggy.attributes or {})["error.type"] == "RuntimeError"


async def test_a_cancelled_wait_ends_with_a_cancelled_event() -> None:
    provider, exporter = rig()
    tracer = provider.get_tracer("test")
    spans = RequestSpans(tracer)
    never, waiting = asyncio.Event(), asyncio.Event()

    async def wait() -> None:
        with tracer.start_as_current_span("request"), spans.queue_wait("admission"):
            waiting.set()
            await never.wait()

    task = asyncio.ensure_future(wait())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = named(exporter, "queue_wait admission")
    assert [e.name for e in span.events] == ["cancelled"]
    assert (span.attributes or {})["sluice.outcome"] == "cancelled"
    assert span.status.status_code == StatusCode.UNSET


def test_record_event_goes_on_the_current_span_only_when_recording() -> None:
    provider, exporter = rig()
    tracer = provider.get_tracer("test")
    record_event("ignored")  # no span: no error
    with tracer.start_as_current_span("request"):
        record_event("retry", {"sluice.retry": 1})
    [span] = exporter.get_finished_spans()
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
        ("retry", {"sluice.retry": 1})
    ]
