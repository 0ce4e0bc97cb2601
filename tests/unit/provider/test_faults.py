"""Fault injection in the simulated model: each fault gives its reason (docs/errors.md)."""

from __future__ import annotations

import asyncio

import pytest

from sluice.common.v1 import common_pb2
from sluice.core.errors import (
    InvalidInputError,
    InvalidResponseError,
    RateLimitExceededError,
    ServiceUnavailableError,
    SluiceError,
    TokenLimitExceededError,
)
from sluice.provider.faults import parse_fault_header
from sluice.provider.settings import FaultSettings, SimulatedBackendSettings
from sluice.provider.simulated import SimulatedBackend
from sluice.provider.v1 import provider_pb2

PROMPT = "How does a sluice gate keep the canal level?"


def backend(**faults: object) -> SimulatedBackend:
    return SimulatedBackend(
        "sim",
        SimulatedBackendSettings(
            time_to_first_token_ms=0,
            tokens_per_second=0,
            answer_tokens=40,
            faults=FaultSettings.model_validate(faults),
        ),
    )


def request(*messages: tuple[str, str], max_tokens: int = 0) -> provider_pb2.StreamRequest:
    return provider_pb2.StreamRequest(
        backend="sim",
        messages=[common_pb2.Message(role=r, content=c) for r, c in messages],
        max_tokens=max_tokens,
    )


async def run(
    model: SimulatedBackend, req: provider_pb2.StreamRequest, faults: FaultSettings | None = None
) -> list[provider_pb2.StreamEvent]:
    return [event async for event in model.stream(req, faults)]


def words(events: list[provider_pb2.StreamEvent]) -> list[str]:
    return "".join(e.delta.text for e in events if e.HasField("delta")).split()


@pytest.mark.parametrize(
    ("faults", "error", "code"),
    [
        ({"error_rate": 1.0}, ServiceUnavailableError, "UNAVAILABLE"),
        ({"rate_limit_rate": 1.0}, RateLimitExceededError, "RESOURCE_EXHAUSTED"),
        ({"malformed_chunk": True}, InvalidResponseError, "UNAVAILABLE"),
        ({"context_length_error": True}, TokenLimitExceededError, "INVALID_ARGUMENT"),
    ],
)
async def test_each_fault_fails_before_the_stream_with_its_reason(
    faults: dict[str, object], error: type[SluiceError], code: str
) -> None:
    events: list[provider_pb2.StreamEvent] = []
    with pytest.raises(error) as caught:
        async for event in backend(**faults).stream(request(("user", PROMPT))):
            events.append(event)
    assert events == []
    assert caught.value.code.name == code
    assert caught.value.metadata["injected"] == "true"


async def test_upstream_429_carries_the_configured_retry_after() -> None:
    with pytest.raises(RateLimitExceededError) as caught:
        await run(backend(rate_limit_rate=1.0, retry_after_ms=2500), request(("user", PROMPT)))
    assert caught.value.retry_after_s == 2.5


async def test_error_rate_is_a_share_of_requests() -> None:
    model = backend(error_rate=0.5)
    failures = 0
    for _ in range(400):
        try:
            await run(model, request(("user", PROMPT)))
        except ServiceUnavailableError:
            failures += 1
    assert 120 < failures < 280


async def test_drop_after_n_tokens_sends_exactly_n_then_fails() -> None:
    events: list[provider_pb2.StreamEvent] = []
    with pytest.raises(ServiceUnavailableError):
        async for event in backend(drop_after_tokens=7).stream(request(("user", PROMPT))):
            events.append(event)
    assert events[0].HasField("start")
    assert sum(e.delta.token_count for e in events if e.HasField("delta")) == 7
    assert len(words(events)) == 7
    assert not any(e.HasField("end") for e in events)


async def test_hang_accepts_then_sends_nothing() -> None:
    events: list[provider_pb2.StreamEvent] = []

    async def read() -> None:
        async for event in backend(hang=True).stream(request(("user", PROMPT))):
            events.append(event)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read(), timeout=0.2)
    assert [e.WhichOneof("event") for e in events] == ["start"]


async def test_an_assistant_prefix_is_continued_not_restarted() -> None:
    model = backend()
    full = words(await run(model, request(("user", PROMPT), max_tokens=30)))
    prefix = " ".join(full[:11])
    rest = await run(model, request(("user", PROMPT), ("assistant", prefix), max_tokens=19))
    assert full[:11] + words(rest) == full
    end = rest[-1].end
    assert end.usage.output_tokens == len(full) - 11


def test_header_faults_scope_to_a_backend_and_reject_nonsense() -> None:
    faults = parse_fault_header(["error_rate=1,backend=sim", "hang=true,backend=other"], "sim")
    assert faults == FaultSettings(error_rate=1.0)
    assert parse_fault_header(["hang=1,backend=other"], "sim") is None
    assert parse_fault_header(["drop_after_tokens=3"], "sim") == FaultSettings(drop_after_tokens=3)
    with pytest.raises(InvalidInputError):
        parse_fault_header(["explode=1"], "sim")
    with pytest.raises(InvalidInputError):
        parse_fault_header(["error_rate=7"], "sim")
    with pytest.raises(InvalidInputError):
        parse_fault_header(["error_rate"], "sim")


async def test_configured_latency_delays_the_start() -> None:
    model = backend(added_latency_ms=30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await run(model, request(("user", PROMPT)))
    assert loop.time() - started >= 0.03
