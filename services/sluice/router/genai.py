"""GenAI semantic-convention attributes on the router's Generate/Complete server span.

OpenTelemetry's `gen_ai.*` conventions plus the names of docs/observability.md
(`user_id`, `session_id`, `model_name`, `token_count`). Prompt and completion text
are never recorded. Every function is a no-op when the current span is not recording
(tracing off or unsampled).

`record_step` is the hook for retries, fallback steps and breaker changes: it adds a
span event to the request's server span (the resilience work calls it).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from sluice.common.v1 import common_pb2
from sluice.core.telemetry.spans import record_event
from sluice.router.validation import GenerationRequest

OPERATION = "chat"
# The GenAI conventions' name for time to first token (seconds); the telemetry service's
# statistics read it too.
TTFT_ATTRIBUTE = "gen_ai.server.time_to_first_token"


def annotate_request(request: GenerationRequest, backend: str, max_tokens: int) -> None:
    """Attributes known at admission."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.request.model": request.model,
        "gen_ai.request.max_tokens": max_tokens,
        "gen_ai.provider.name": backend,
        "model_name": request.model,
    }
    if request.user:
        attributes["user_id"] = request.user
    if request.session_id:
        attributes["session_id"] = request.session_id
        attributes["gen_ai.conversation.id"] = request.session_id
    span.set_attributes(attributes)


def annotate_leased_admission() -> None:
    """The request was admitted from a limiter lease: its trace has no limiter call."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("sluice.limiter.lease", True)


def annotate_response_model(model: str) -> None:
    """The model the provider actually used."""
    span = trace.get_current_span()
    if span.is_recording() and model:
        span.set_attribute("gen_ai.response.model", model)


def finish_reason_name(finish_reason: common_pb2.FinishReason) -> str:
    """FINISH_REASON_STOP -> "stop", as the GenAI conventions spell finish reasons."""
    if finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED:
        return ""
    return common_pb2.FinishReason.Name(finish_reason).removeprefix("FINISH_REASON_").lower()


def annotate_completion(
    finish_reason: common_pb2.FinishReason,
    usage: common_pb2.Usage,
    time_to_first_token_s: float,
) -> None:
    """Usage and finish reason, when the stream completes."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    reason = finish_reason_name(finish_reason)
    span.set_attributes(
        {
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "gen_ai.response.finish_reasons": [reason] if reason else [],
            "token_count": usage.input_tokens + usage.output_tokens,
            TTFT_ATTRIBUTE: time_to_first_token_s,
        }
    )


def record_step(name: str, attributes: dict[str, AttributeValue] | None = None) -> None:
    """A retry, fallback step or breaker change, as an event on the request's span."""
    record_event(name, attributes)
