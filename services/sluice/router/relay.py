"""What one answer stream has produced, and every event it sends.

This module is the only place that changes a `StreamState`, builds a client event
(`GenerateEvent` and its metadata, data, progress, complete and error payloads) or
numbers one. The parts of the request path (router/attempts.py per provider stream,
router/fallback.py down the chain, router/pipeline.py at the end, router/converse.py
per turn) call in here; docs/architecture.md walks the whole path.

Sequence numbers are given once, by the last stage (`StreamState.number`, called by
the pipeline as each event leaves): the adaptive buffer (router/buffer.py) may merge
events before that, so numbering earlier would leave gaps.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from sluice.common.v1 import common_pb2
from sluice.core.errors import SluiceError
from sluice.core.grpcx.request_context import current_request_id
from sluice.core.telemetry.tracing import current_trace_id
from sluice.core.tokens import count_tokens
from sluice.router import genai
from sluice.router.provider_streams import ProviderCall
from sluice.router.v1 import router_pb2

PRIMARY = common_pb2.FALLBACK_STEP_PRIMARY
SECONDARY = common_pb2.FALLBACK_STEP_SECONDARY
CACHE = common_pb2.FALLBACK_STEP_CACHE
SIMPLIFIED = common_pb2.FALLBACK_STEP_SIMPLIFIED
FAILOVER = "failover"
"""The degradation a stream reports once another back end continued its answer."""

CANCELLED = "CANCELLED"
"""Reason and gRPC code name of the error event that ends a Converse turn the client
cancelled. A cancel is the client's own wish, not a failure, so it is none of the error
reasons (docs/errors.md); it uses the gRPC code a cancelled Generate call ends with."""

UPSTREAM_CALLS: contextvars.ContextVar[set[ProviderCall] | None] = contextvars.ContextVar(
    "converse_upstream_calls", default=None
)
"""The provider calls of the running Converse turn (router/attempts.py registers each),
so a cancel reaches them directly: a task cancel can be lost inside a grpc.aio read."""


@dataclass(slots=True)
class StreamState:
    """What one stream has produced so far; changed only through its methods."""

    started: float
    sequence: int = 0
    """Events sent so far (the next event's number)."""
    output_tokens: int = 0
    first_token_at: float = 0.0
    backend: str = ""
    finished: bool = False
    attempt: int = 0
    step: int = PRIMARY
    text: list[str] = field(default_factory=list)
    prior_usage: common_pb2.Usage = field(default_factory=common_pb2.Usage)
    completed: router_pb2.CompleteEvent | None = None
    degradations: list[str] = field(default_factory=list)
    reservation_id: str = ""
    """Set when a token limit reserved an estimate that must be reconciled at the end."""
    input_tokens_estimate: int = 0
    whole_answer: bool = False
    """The client waits for the whole answer (no partial output is relayed to it)."""
    cost: float = 0.0
    """What the stream cost under its alias's price, once settled (0 when unpriced)."""

    # -- the request path reports -------------------------------------------------------

    def number(self, event: router_pb2.GenerateEvent) -> router_pb2.GenerateEvent:
        """Give `event` the stream's next sequence number (the last stage does, once)."""
        event.sequence = self.sequence
        self.sequence += 1
        return event

    def degrade(self, degradation: str) -> None:
        """The stream is served in a degraded way (listed on its metadata event)."""
        if degradation not in self.degradations:
            self.degradations.append(degradation)

    def hold_reservation(self, reservation_id: str, input_tokens_estimate: int) -> None:
        """A token limit reserved an estimate; it is reconciled when the stream ends."""
        self.reservation_id = reservation_id
        self.input_tokens_estimate = input_tokens_estimate

    def begin_attempt(self, step: int, backend: str) -> None:
        """One more attempt, at `step` of the fallback chain, on `backend`."""
        self.attempt += 1
        self.step = step
        self.backend = backend

    def attempt_refused(self) -> None:
        """The attempt just begun never started (its back end had no room)."""
        self.attempt -= 1

    def failed_over(self, prompt: Sequence[common_pb2.Message]) -> None:
        """An attempt broke after its tokens reached the client; its usage is added to
        the final usage of the continuation."""
        self.degrade(FAILOVER)
        usage = self.prior_usage
        usage.input_tokens += sum(count_tokens(m.content) for m in prompt)
        usage.output_tokens = self.output_tokens
        usage.total_tokens = usage.input_tokens + usage.output_tokens
        usage.estimated = True

    def add_text(self, text: str, tokens: int, now: float) -> bool:
        """Output reached the stream; True when it is the first token."""
        first = not self.first_token_at
        if first:
            self.first_token_at = now
        self.output_tokens += tokens
        self.text.append(text)
        return first

    def answer_so_far(self) -> str:
        """The text streamed so far (what a continuation carries on from)."""
        return "".join(self.text)

    def actual_tokens(self) -> int:
        """Tokens the stream used: the final usage, else the estimate plus output so far."""
        if self.completed is not None:
            return self.completed.usage.input_tokens + self.completed.usage.output_tokens
        return self.input_tokens_estimate + self.output_tokens


# -- event builders --------------------------------------------------------------------


def metadata_event(
    state: StreamState, model: str, provider: str, provider_model: str = ""
) -> router_pb2.GenerateEvent:
    """The stream's first event: who serves it, on which attempt and step."""
    if provider_model:
        genai.annotate_response_model(provider_model)
    return router_pb2.GenerateEvent(
        metadata=router_pb2.MetadataEvent(
            request_id=current_request_id(),
            trace_id=current_trace_id(),
            model=model,
            provider=provider,
            provider_model=provider_model,
            attempt=state.attempt,
            fallback_step=state.step,  # type: ignore[arg-type]
            degradations=state.degradations,
        )
    )


def data_event(text: str, token_count: int) -> router_pb2.GenerateEvent:
    """Output text."""
    return router_pb2.GenerateEvent(data=router_pb2.DataEvent(text=text, token_count=token_count))


def tool_call_event(tool_call: common_pb2.ToolCallDelta) -> router_pb2.GenerateEvent:
    """A tool call the model made."""
    return router_pb2.GenerateEvent(tool_call=tool_call)


def progress_event(state: StreamState, now: float) -> router_pb2.GenerateEvent:
    """Tokens so far and their rate (now: a `time.perf_counter()` reading)."""
    generating = now - state.first_token_at if state.first_token_at else 0.0
    rate = state.output_tokens / generating if generating > 0 else 0.0
    return router_pb2.GenerateEvent(
        progress=router_pb2.ProgressEvent(
            output_tokens=state.output_tokens,
            tokens_per_second=round(rate, 2),
            elapsed_ms=int((now - state.started) * 1000),
        )
    )


def complete_event(
    finish_reason: common_pb2.FinishReason, usage: common_pb2.Usage, step: int
) -> router_pb2.GenerateEvent:
    """The end of an answer served by the chain itself (cache, simplified): no provider
    usage to reconcile, so the state keeps none."""
    return router_pb2.GenerateEvent(
        complete=router_pb2.CompleteEvent(
            finish_reason=finish_reason,
            usage=usage,
            fallback_step=step,  # type: ignore[arg-type]
        )
    )


def provider_complete_event(
    state: StreamState, finish_reason: common_pb2.FinishReason, usage: common_pb2.Usage, now: float
) -> router_pb2.GenerateEvent:
    """The end of a provider stream (usage of a broken earlier attempt added), kept on
    the state for the cache, budgets and reconciliation."""
    ttft = state.first_token_at - state.started if state.first_token_at else 0.0
    if state.prior_usage.output_tokens:
        prior = state.prior_usage
        usage = common_pb2.Usage(
            input_tokens=usage.input_tokens + prior.input_tokens,
            output_tokens=usage.output_tokens + prior.output_tokens,
            total_tokens=usage.total_tokens + prior.total_tokens,
            estimated=True,
        )
    genai.annotate_completion(finish_reason, usage, ttft)
    state.finished = True
    state.completed = router_pb2.CompleteEvent(
        finish_reason=finish_reason,
        usage=usage,
        fallback_step=state.step,  # type: ignore[arg-type]
        time_to_first_token_ms=int(ttft * 1000),
        total_ms=int((now - state.started) * 1000),
    )
    return router_pb2.GenerateEvent(complete=state.completed)


def error_event(
    error: SluiceError, output_tokens: int, *, sequence: int = 0
) -> router_pb2.GenerateEvent:
    """The in-band end of a stream that failed after its first event."""
    return router_pb2.GenerateEvent(
        sequence=sequence,
        error=router_pb2.ErrorEvent(
            reason=error.reason,
            message=error.message,
            grpc_code=error.code.name,
            retry_after_ms=int((error.retry_after_s or 0.0) * 1000),
            usage=common_pb2.Usage(output_tokens=output_tokens, estimated=True),
        ),
    )


def cancelled_event(output_tokens: int, *, sequence: int) -> router_pb2.GenerateEvent:
    """The end of a Converse turn its client cancelled."""
    return router_pb2.GenerateEvent(
        sequence=sequence,
        error=router_pb2.ErrorEvent(
            reason=CANCELLED,
            message="the turn was cancelled by the client",
            grpc_code=CANCELLED,
            usage=common_pb2.Usage(output_tokens=output_tokens, estimated=True),
        ),
    )


# -- one answer from the events --------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """A stream folded into one answer (for clients that wait for the whole of it)."""

    text: str = ""
    metadata: router_pb2.MetadataEvent = field(default_factory=router_pb2.MetadataEvent)
    complete: router_pb2.CompleteEvent = field(default_factory=router_pb2.CompleteEvent)


async def fold(events: AsyncIterator[router_pb2.GenerateEvent]) -> Answer:
    """Read a stream to its end and fold it into one `Answer`."""
    answer = Answer()
    text: list[str] = []
    async for event in events:
        kind = event.WhichOneof("event")
        if kind == "data":
            text.append(event.data.text)
        elif kind == "metadata":
            answer.metadata = event.metadata
        elif kind == "complete":
            answer.complete = event.complete
    answer.text = "".join(text)
    return answer
