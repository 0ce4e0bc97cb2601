"""Fallback-chain pieces: breaker state as metric and span event, the cache's key and TTL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import cast

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from sluice.common.v1 import common_pb2
from sluice.core.errors import InvalidInputError, NetworkFailureError
from sluice.core.resilience.breaker import BreakerState
from sluice.router.cache import CachedAnswer, ResponseCache, cache_key
from sluice.router.downstream import error_from_code
from sluice.router.fallback import BackendGuard, FallbackChain, ResilienceMetrics
from sluice.router.relay import StreamState
from sluice.router.settings import RouterSettings
from sluice.router.v1 import router_pb2
from tests.support import FakeClock


def test_breaker_transitions_are_a_gauge_a_counter_and_span_events() -> None:
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clock = FakeClock()
    settings = RouterSettings.model_validate(
        {"resilience": {"backends": {"primary": {"breaker": {"failure_threshold": 2}}}}}
    )
    guard = BackendGuard("primary", settings, clock, ResilienceMetrics(registry))
    assert guard.breaker_settings.failure_threshold == 2
    with provider.get_tracer("test").start_as_current_span("request"):
        guard.breaker.record_failure()
        guard.breaker.record_failure()
    assert registry.get_sample_value("sluice_router_breaker_state", {"backend": "primary"}) == 2
    assert (
        registry.get_sample_value(
            "sluice_router_breaker_transitions_total", {"backend": "primary", "state": "open"}
        )
        == 1
    )
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "circuit_breaker.state_change"
    assert dict(event.attributes or {}) == {"backend": "primary", "from": "CLOSED", "to": "OPEN"}


def test_default_breaker_applies_to_backends_without_an_override() -> None:
    settings = RouterSettings.model_validate({})
    guard = BackendGuard("other", settings, FakeClock(), ResilienceMetrics(CollectorRegistry()))
    assert guard.breaker_settings.failure_threshold == 5
    # Above the adaptive limit's default ceiling (5,461), which normally bounds streams.
    assert guard.bulkhead.settings.max_concurrent == 10_000


def message(role: str, content: str) -> common_pb2.Message:
    return common_pb2.Message(role=role, content=content)


def test_cache_key_normalises_whitespace_but_not_meaning() -> None:
    base = cache_key("default", [message("user", "hello")], [16, None, []])
    assert cache_key("default", [message("user", "  hello\n")], [16, None, []]) == base
    assert cache_key("default", [message("user", "hello!")], [16, None, []]) != base
    assert cache_key("default", [message("system", "hello")], [16, None, []]) != base
    assert cache_key("other", [message("user", "hello")], [16, None, []]) != base
    assert cache_key("default", [message("user", "hello")], [17, None, []]) != base
    assert cache_key("default", [message("user", "hello")], [16, 0.5, []]) != base


async def test_cache_is_lru_with_ttl_on_the_injected_clock() -> None:
    clock = FakeClock()
    cache = ResponseCache(max_entries=2, ttl_s=10.0, clock=clock)
    answer = CachedAnswer("text", 1, common_pb2.FINISH_REASON_STOP, b"")
    await cache.put("a", answer)
    await cache.put("b", answer)
    assert await cache.get("a") == answer  # a is now the most recently used
    await cache.put("c", answer)
    assert await cache.get("b") is None
    assert await cache.get("a") == answer
    clock.advance(10.0)
    assert await cache.get("a") is None
    assert len(cache) == 0


class ClientErrorStream:
    """A ChainStream whose every attempt fails with the client's own mistake."""

    def __init__(self) -> None:
        self.state = StreamState(started=0.0)
        self.attempts = 0

    def begin_attempt(self, step: int, backend: str) -> None:
        self.attempts += 1

    def attempt_refused(self) -> None:
        pass

    def failed_over(self, prompt: Sequence[common_pb2.Message]) -> None:
        pass

    async def attempt(self, *args: object) -> AsyncIterator[router_pb2.GenerateEvent]:
        raise InvalidInputError("the request cannot be served as written")
        yield router_pb2.GenerateEvent()  # an async generator, like the real stream

    async def serve_cached(self, cached: CachedAnswer) -> AsyncIterator[router_pb2.GenerateEvent]:
        yield router_pb2.GenerateEvent()

    async def serve_simplified(self, text: str) -> AsyncIterator[router_pb2.GenerateEvent]:
        yield router_pb2.GenerateEvent()


async def test_a_client_error_in_half_open_frees_its_probe_slot() -> None:
    clock = FakeClock()
    settings = RouterSettings.model_validate(
        {
            "resilience": {
                "breaker": {
                    "failure_threshold": 1,
                    "half_open_requests": 1,
                    "reset_timeout": 1000,
                }
            }
        }
    )
    chain = FallbackChain(settings, ResilienceMetrics(CollectorRegistry()), clock)
    breaker = chain.guard("simulated").breaker
    assert breaker.allow()
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.state is BreakerState.HALF_OPEN
    stream = ClientErrorStream()
    with pytest.raises(InvalidInputError):
        async for _ in chain.run(
            model="default",
            alias=settings.models["default"],
            messages=[message("user", "hi")],
            max_tokens=16,
            cache_extra=[],
            deadline=clock.monotonic() + 30.0,
            stream=stream,
        ):
            pass
    assert stream.attempts == 1
    # No verdict on the back end: still half-open, and the next request may probe it.
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()


class DyingReplicaStream(ClientErrorStream):
    """The first attempt streams two tokens, then its provider replica dies (the call
    breaks: NETWORK_FAILURE from the provider hop); later attempts finish the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[list[str]] = []

    def failed_over(self, prompt: Sequence[common_pb2.Message]) -> None:
        self.state.failed_over(prompt)

    async def attempt(self, *args: object) -> AsyncIterator[router_pb2.GenerateEvent]:
        messages = cast(Sequence[common_pb2.Message], args[1])  # (target, messages, ...)
        self.prompts.append([m.content for m in messages])
        if self.attempts == 1:
            for word in ("one ", "two "):
                self.state.add_text(word, 1, 0.0)
                yield router_pb2.GenerateEvent(data=router_pb2.DataEvent(text=word))
            raise error_from_code(grpc.StatusCode.UNAVAILABLE, "provider")
        self.state.add_text("three", 1, 0.0)
        yield router_pb2.GenerateEvent(data=router_pb2.DataEvent(text="three"))


def failure_threshold_one(provider_address: str) -> RouterSettings:
    return RouterSettings.model_validate(
        {
            "provider_address": provider_address,
            "resilience": {"breaker": {"failure_threshold": 1}, "cache": {"enabled": False}},
        }
    )


async def answer(settings: RouterSettings, stream: DyingReplicaStream) -> tuple[FallbackChain, str]:
    chain = FallbackChain(settings, ResilienceMetrics(CollectorRegistry()), FakeClock())
    text = ""
    async for event in chain.run(
        model="default",
        alias=settings.models["default"],
        messages=[message("user", "count")],
        max_tokens=16,
        cache_extra=[],
        deadline=1_030.0,
        stream=stream,
    ):
        text += event.data.text
    return chain, text


async def test_a_dying_provider_replica_hands_its_stream_on_and_leaves_the_breaker() -> None:
    settings = failure_threshold_one("ipv4:127.0.0.1:50053,127.0.0.1:50153")
    stream = DyingReplicaStream()
    chain, text = await answer(settings, stream)
    # The same back end continued the answer (another replica), after the two tokens.
    assert text == "one two three"
    assert stream.attempts == 2
    assert stream.prompts[1] == ["count", "one two "]
    # A killed replica says nothing of the back end: its breaker stays closed.
    assert chain.guard("simulated").breaker.state is BreakerState.CLOSED


async def test_with_one_provider_a_broken_call_still_counts_against_the_back_end() -> None:
    settings = failure_threshold_one("127.0.0.1:50053")
    chain = FallbackChain(settings, ResilienceMetrics(CollectorRegistry()), FakeClock())
    stream = DyingReplicaStream()
    with pytest.raises(NetworkFailureError):
        async for _ in chain.run(
            model="default",
            alias=settings.models["default"],
            messages=[message("user", "count")],
            max_tokens=16,
            cache_extra=[],
            deadline=1_030.0,
            stream=stream,
        ):
            pass
    assert stream.attempts == 1  # no other back end, and tokens already went out
    assert chain.guard("simulated").breaker.state is BreakerState.OPEN
