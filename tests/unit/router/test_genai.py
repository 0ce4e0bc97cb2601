"""GenAI attributes and step events on the router's span."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from sluice.common.v1 import common_pb2
from sluice.router import genai
from sluice.router.v1 import router_pb2


def request(user: str = "", session_id: str = "") -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content="secret prompt")],
        user=user,
        session_id=session_id,
    )


def test_attributes_follow_the_genai_conventions_plus_ours() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("Generate"):
        genai.annotate_request(request(user="u1", session_id="s1"), "openai", 64)
        genai.annotate_response_model("gpt-4o-2024")
        genai.record_step("fallback", {"step": "secondary", "backend": "anthropic"})
        genai.annotate_completion(
            common_pb2.FINISH_REASON_STOP,
            common_pb2.Usage(input_tokens=7, output_tokens=5),
            0.125,
        )

    [span] = memory.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "default",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.provider.name": "openai",
        "model_name": "default",
        "user_id": "u1",
        "session_id": "s1",
        "gen_ai.conversation.id": "s1",
        "gen_ai.response.model": "gpt-4o-2024",
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.response.finish_reasons": ("stop",),
        "token_count": 12,
        "gen_ai.server.time_to_first_token": 0.125,
    }
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
        ("fallback", {"step": "secondary", "backend": "anthropic"})
    ]
    assert "secret prompt" not in str(attributes)
    provider.shutdown()


def test_absent_user_and_session_are_not_recorded() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("Generate"):
        genai.annotate_request(request(), "simulated", 16)
        genai.annotate_completion(common_pb2.FINISH_REASON_UNSPECIFIED, common_pb2.Usage(), 0.0)
    [span] = memory.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert not {"user_id", "session_id", "gen_ai.conversation.id"} & set(attributes)
    assert attributes["gen_ai.response.finish_reasons"] == ()


def test_nothing_happens_without_a_recording_span() -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    with provider.get_tracer("t").start_as_current_span("Generate") as span:
        assert not span.is_recording()
        genai.annotate_request(request(user="u1"), "simulated", 16)
        genai.record_step("retry")
    # And with no span at all.
    assert not trace.get_current_span().is_recording()
    genai.record_step("retry")
    genai.annotate_response_model("m")


def test_a_leased_admission_is_marked_on_the_request_span() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("Generate"):
        genai.annotate_leased_admission()
    with provider.get_tracer("t").start_as_current_span("Generate"):
        pass  # admitted by a limiter call: no mark

    leased, called = memory.get_finished_spans()
    assert dict(leased.attributes or {}) == {"sluice.limiter.lease": True}
    assert "sluice.limiter.lease" not in dict(called.attributes or {})
