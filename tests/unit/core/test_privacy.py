"""PII redaction (core/privacy.py) and the recorders that use it: log records, exported
spans, cached answers; the in-memory cache's erasure by user."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry

from sluice.common.v1 import common_pb2
from sluice.core.privacy import (
    API_KEY,
    CARD,
    EMAIL,
    IP,
    PHONE,
    RedactingLogFilter,
    luhn_valid,
    redact,
)
from sluice.core.telemetry.logging import JsonFormatter
from sluice.core.telemetry.span_export import RedactingSpanExporter
from sluice.router.cache import CachedAnswer, ResponseCache
from sluice.router.fallback import FallbackChain, ResilienceMetrics
from sluice.router.relay import StreamState
from sluice.router.settings import BackendRef, RouterSettings
from sluice.router.v1 import router_pb2
from tests.support import FakeClock

FOUND = [
    ("write to alice.smith+tag@example.co.uk today", f"write to {EMAIL} today"),
    ("card 4111 1111 1111 1111 exp", f"card {CARD} exp"),
    ("card 5555-5555-5555-4444", f"card {CARD}"),
    ("amex 378282246310005.", f"amex {CARD}."),
    ("client 203.0.113.9:443", f"client {IP}:443"),
    ("from 2001:db8::8a2e:370:7334 now", f"from {IP} now"),
    ("call +44 20 7946 0958", f"call {PHONE}"),
    ("call (555) 123-4567 or 555.123.4567", f"call {PHONE} or {PHONE}"),
    ("key sk-proj-abcdEFGH12345678", f"key {API_KEY}"),
    ("authorization: Bearer abc.def-ghi_jkl", f"authorization: Bearer {API_KEY}"),
    ("aws AKIAIOSFODNN7EXAMPLE", f"aws {API_KEY}"),
    ("token aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z", f"token {API_KEY}"),
]
KEPT = [
    "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
    "request 3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "card-like 4111 1111 1111 1112 fails Luhn",
    "loopback 127.0.0.1:50051 and ::1",
    "at 12:30:45, 1234 tokens, $12.50, version 1.2.3",
    "std::vector and sluice.router.v1.RouterService/Generate",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
]


@pytest.mark.parametrize(("text", "expected"), FOUND)
def test_each_kind_is_replaced_by_its_placeholder(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_ids_times_and_numbers_are_kept(text: str) -> None:
    assert redact(text) == text


def test_redaction_is_idempotent_and_luhn_is_checked() -> None:
    once = redact(" ".join(text for text, _ in FOUND))
    assert redact(once) == once
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("test"))
    handler.addFilter(RedactingLogFilter())
    log = logging.Logger("privacy-test")
    log.addHandler(handler)
    yield log, out


def test_log_records_are_redacted_arguments_and_exceptions_included(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    log.warning("user %s from %s", "bob@example.com", "198.51.100.4")
    try:
        raise ValueError("card 4111111111111111 refused")
    except ValueError:
        log.exception("failed for sk-sluice-0123456789abcdef")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == f"user {EMAIL} from {IP}"
    assert second["msg"] == f"failed for {API_KEY}"
    assert f"ValueError: card {CARD} refused" in second["exception"]
    assert "4111111111111111" not in out.getvalue()


def test_exported_spans_are_redacted_ids_and_names_kept() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedactingSpanExporter(memory)))
    with provider.get_tracer("t").start_as_current_span("op@example.com") as span:
        span.set_attribute("user_id", "carol@example.com")
        span.set_attribute("tags", ["ok", "+1 415 555 0100"])
        span.set_attribute("token_count", 12)
        span.add_event("retry", {"peer": "203.0.113.50"})
        span.set_status(Status(StatusCode.ERROR, "upstream said Bearer abcdefgh12345"))
        trace_id = span.get_span_context().trace_id
    (exported,) = memory.get_finished_spans()
    assert exported.name == "op@example.com"  # names are ours, not user data
    assert exported.context is not None and exported.context.trace_id == trace_id
    attributes = dict(exported.attributes or {})
    assert attributes["user_id"] == EMAIL
    assert list(attributes["tags"]) == ["ok", PHONE]  # type: ignore[arg-type]
    assert attributes["token_count"] == 12
    assert dict(exported.events[0].attributes or {}) == {"peer": IP}
    assert exported.status.description == f"upstream said Bearer {API_KEY}"


ANSWER = CachedAnswer(text="hi", output_tokens=1, finish_reason=1, usage=b"")


async def test_memory_cache_erases_every_entry_a_user_shares_and_only_those() -> None:
    cache = ResponseCache(max_entries=10, ttl_s=60.0, clock=FakeClock())
    await cache.put("x-only", ANSWER, "x")
    await cache.put("shared", ANSWER, "y")
    await cache.put("shared", ANSWER, "x")  # the same request by both users
    await cache.put("y-only", ANSWER, "y")
    await cache.put("anonymous", ANSWER)
    before = cache.bytes_used

    assert await cache.erase_user("x") == 2
    assert await cache.get("x-only") is None and await cache.get("shared") is None
    assert await cache.get("y-only") == ANSWER and await cache.get("anonymous") == ANSWER
    assert cache.bytes_used < before
    assert await cache.erase_user("x") == 0
    assert await cache.erase_user("y") == 1


class DoneStream:
    """A ChainStream whose first attempt completes with `text`."""

    def __init__(self, text: str) -> None:
        self.state = StreamState(started=0.0)
        self._text = text

    def begin_attempt(self, step: int, backend: str) -> None:
        pass

    def attempt_refused(self) -> None:
        pass

    def failed_over(self, prompt: Sequence[common_pb2.Message]) -> None:
        pass

    async def attempt(
        self, target: BackendRef, *args: object
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        self.state.text.append(self._text)
        self.state.completed = router_pb2.CompleteEvent()
        yield router_pb2.GenerateEvent()

    async def serve_cached(self, cached: CachedAnswer) -> AsyncIterator[router_pb2.GenerateEvent]:
        yield router_pb2.GenerateEvent()

    async def serve_simplified(self, text: str) -> AsyncIterator[router_pb2.GenerateEvent]:
        yield router_pb2.GenerateEvent()


@pytest.mark.parametrize("redact_pii", [True, False])
async def test_cached_answers_are_redacted_when_the_option_is_on(redact_pii: bool) -> None:
    settings = RouterSettings.model_validate({"privacy": {"redact_pii": redact_pii}})
    chain = FallbackChain(settings, ResilienceMetrics(CollectorRegistry()), FakeClock())
    text = "mail dave@example.org or call +1 415 555 0100"
    async for _ in chain.run(
        model="default",
        alias=settings.models["default"],
        messages=[common_pb2.Message(role="user", content="contact?")],
        max_tokens=16,
        cache_extra=[],
        deadline=1e12,
        stream=DoneStream(text),
        user="dave",
    ):
        pass
    assert isinstance(chain.cache, ResponseCache) and len(chain.cache) == 1
    assert await chain.erase_user("dave") == 1
    # Stored again to read it back: erasure emptied the cache.
    async for _ in chain.run(
        model="default",
        alias=settings.models["default"],
        messages=[common_pb2.Message(role="user", content="contact?")],
        max_tokens=16,
        cache_extra=[],
        deadline=1e12,
        stream=DoneStream(text),
    ):
        pass
    stored = [entry[1].text for entry in chain.cache._entries.values()]
    assert stored == [f"mail {EMAIL} or call {PHONE}" if redact_pii else text]
