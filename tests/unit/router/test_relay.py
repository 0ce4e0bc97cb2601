"""The relay (router/relay.py) and the chain's collaborator contract (router/fallback.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from sluice.common.v1 import common_pb2
from sluice.core.errors import ServiceUnavailableError
from sluice.router import relay
from sluice.router.cache import CachedAnswer
from sluice.router.fallback import FallbackChain, ResilienceMetrics
from sluice.router.relay import PRIMARY, SECONDARY, SIMPLIFIED, StreamState
from sluice.router.settings import BackendRef, ModelAliasSettings, RouterSettings
from sluice.router.v1 import router_pb2
from tests.support import FakeClock


async def events_of(*events: router_pb2.GenerateEvent) -> AsyncIterator[router_pb2.GenerateEvent]:
    for event in events:
        yield event


def test_numbering_is_contiguous_and_the_error_after_it_takes_the_next_number() -> None:
    state = StreamState(started=0.0)
    sent = [state.number(relay.data_event(text, 1)) for text in ("a", "b", "c")]
    assert [e.sequence for e in sent] == [0, 1, 2]
    error = state.number(relay.error_event(ServiceUnavailableError("gone"), 3))
    assert error.sequence == 3
    assert error.error.reason == "SERVICE_UNAVAILABLE"
    assert error.error.grpc_code == "UNAVAILABLE"
    assert error.error.usage.output_tokens == 3
    assert state.sequence == 4


def test_a_failover_is_listed_once_and_its_usage_adds_to_the_continuation() -> None:
    state = StreamState(started=0.0)
    state.begin_attempt(PRIMARY, "a")
    state.add_text("one two", 2, now=1.0)
    prompt = [common_pb2.Message(role="user", content="hello world")]
    state.failed_over(prompt)
    state.failed_over(prompt)
    assert state.degradations == [relay.FAILOVER]
    state.begin_attempt(SECONDARY, "b")
    assert (state.attempt, state.step, state.backend) == (2, SECONDARY, "b")
    event = relay.provider_complete_event(
        state,
        common_pb2.FINISH_REASON_STOP,
        common_pb2.Usage(input_tokens=5, output_tokens=3, total_tokens=8),
        now=2.0,
    )
    usage = event.complete.usage
    assert usage.output_tokens == 3 + 2
    assert usage.input_tokens > 5
    assert usage.estimated
    assert event.complete.fallback_step == SECONDARY
    assert state.finished and state.completed == event.complete
    assert state.actual_tokens() == usage.input_tokens + usage.output_tokens


async def test_fold_reads_a_stream_into_one_answer() -> None:
    state = StreamState(started=0.0)
    answer = await relay.fold(
        events_of(
            relay.metadata_event(state, "default", "primary", "m-1"),
            relay.data_event("Hello, ", 2),
            relay.progress_event(state, 0.5),
            relay.data_event("world", 1),
            relay.complete_event(common_pb2.FINISH_REASON_LENGTH, common_pb2.Usage(), PRIMARY),
        )
    )
    assert answer.text == "Hello, world"
    assert answer.metadata.provider == "primary"
    assert answer.metadata.provider_model == "m-1"
    assert answer.complete.finish_reason == common_pb2.FINISH_REASON_LENGTH


@dataclass
class FakeStream:
    """A request's stream as the chain sees it: back end `a` always fails at once."""

    state: StreamState = field(default_factory=lambda: StreamState(started=0.0))
    begun: list[tuple[int, str]] = field(default_factory=list)

    def begin_attempt(self, step: int, backend: str) -> None:
        self.begun.append((step, backend))
        self.state.begin_attempt(step, backend)

    def attempt_refused(self) -> None:
        self.state.attempt_refused()

    def failed_over(self, prompt: Sequence[common_pb2.Message]) -> None:
        self.state.failed_over(prompt)

    async def attempt(
        self,
        target: BackendRef,
        messages: Sequence[common_pb2.Message],
        max_tokens: int,
        timeout_s: float,
        first_token_timeout_s: float,
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        if target.backend == "a":
            raise ServiceUnavailableError("a is down")
        yield relay.metadata_event(self.state, "default", target.backend)
        yield relay.data_event("hi", 1)

    async def serve_cached(self, cached: CachedAnswer) -> AsyncIterator[router_pb2.GenerateEvent]:
        raise AssertionError("no cache configured")
        yield  # pragma: no cover

    async def serve_simplified(self, text: str) -> AsyncIterator[router_pb2.GenerateEvent]:
        self.state.begin_attempt(SIMPLIFIED, "simplified")
        yield relay.data_event(text, 1)


async def no_sleep(_seconds: float) -> None:
    return None


async def run_chain(
    registry: CollectorRegistry, alias: ModelAliasSettings, stream: FakeStream
) -> list[router_pb2.GenerateEvent]:
    settings = RouterSettings.model_validate({"resilience": {"cache": {"enabled": False}}})
    chain = FallbackChain(settings, ResilienceMetrics(registry), FakeClock(), sleep=no_sleep)
    return [
        event
        async for event in chain.run(
            model="default",
            alias=alias,
            messages=[],
            max_tokens=16,
            cache_extra=(),
            deadline=1_060.0,  # the fake clock reads 1,000 s
            stream=stream,
        )
    ]


async def test_the_chain_retries_then_moves_on_through_its_collaborator() -> None:
    registry = CollectorRegistry()
    stream = FakeStream()
    alias = ModelAliasSettings(backends=[BackendRef(backend="a"), BackendRef(backend="b")])
    events = await run_chain(registry, alias, stream)
    assert stream.begun == [(PRIMARY, "a"), (PRIMARY, "a"), (SECONDARY, "b")]
    assert [e.WhichOneof("event") for e in events] == ["metadata", "data"]
    assert events[0].metadata.attempt == 3
    assert events[0].metadata.fallback_step == SECONDARY
    served = registry.get_sample_value(
        "sluice_router_fallback_served_total", {"model": "default", "step": "secondary"}
    )
    assert served == 1


async def test_the_simplified_answer_is_served_by_the_stream_when_every_back_end_fails() -> None:
    registry = CollectorRegistry()
    stream = FakeStream()
    alias = ModelAliasSettings(backends=[BackendRef(backend="a")], simplified_text="later")
    events = await run_chain(registry, alias, stream)
    assert [e.data.text for e in events] == ["later"]
    assert stream.state.step == SIMPLIFIED
    served = registry.get_sample_value(
        "sluice_router_fallback_served_total", {"model": "default", "step": "simplified"}
    )
    assert served == 1


async def test_with_nothing_to_fall_back_on_the_last_error_is_raised() -> None:
    alias = ModelAliasSettings(backends=[BackendRef(backend="a")])
    with pytest.raises(ServiceUnavailableError, match="a is down"):
        await run_chain(CollectorRegistry(), alias, FakeStream())
