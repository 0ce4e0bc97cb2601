"""The provider service over real HTTP back ends: the OpenAI and Anthropic fakes.

Each test runs the provider in-process on a free port, with back ends "oa" (OpenAI
Chat Completions) and "an" (Anthropic Messages) pointing at the fakes, and reads what
the official wire formats produce through our gRPC contract: text, tool calls, exact
usage, typed errors (docs/errors.md), GenAI spans and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sluice.common.v1 import common_pb2
from sluice.core.config import deep_merge, load_settings
from sluice.core.grpcx.server import ServiceHost
from sluice.provider.service import build_server as build_provider
from sluice.provider.settings import ProviderSettings
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.common import FakeBehaviour, FakeServer
from tests.fakes.openai_fake import OpenAIFake
from tests.support import (
    FAST_BACKEND,
    ServiceStack,
    collect,
    details_of,
    error_info,
    eventually,
    metric,
    rich_status,
    scrape,
)

KEY = "sk-planted-secret-5f2a9c81e7d4b3a6"
KEY_ENV = "SLUICE_TEST_UPSTREAM_KEY"
PROMPT = "how does a sluice gate work?"  # 7 tokens for the fakes and for Sluice
ANSWER = 6
TOOL = common_pb2.Tool(
    name="lookup",
    description="Look something up.",
    parameters_json=json.dumps({"type": "object", "properties": {"query": {"type": "string"}}}),
)


@dataclass
class Rig:
    """A provider service wired to both fakes, with its spans captured in memory."""

    host: ServiceHost
    stub: provider_pb2_grpc.ProviderServiceStub
    spans: InMemorySpanExporter
    fakes: dict[str, FakeServer]

    def fake(self, backend: str) -> FakeServer:
        return self.fakes[backend]

    def client_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name.startswith("chat ")]


def http_backend(kind: str, fake: FakeServer, **extra: Any) -> dict[str, Any]:
    base = {
        "kind": kind,
        "base_url": fake.base_url,
        "model": "gpt-4o-mini" if kind == "openai" else "claude-x",
        "models": {"fast": "gpt-4o" if kind == "openai" else "claude-fast"},
        "api_key_env": KEY_ENV,
        "timeouts": {"connect_s": 2, "first_token_s": 2, "idle_s": 2, "total_s": 10},
    }
    return deep_merge(base, extra)


async def start_rig(
    stack: ServiceStack,
    fakes: dict[str, FakeServer],
    backends: dict[str, dict[str, Any]],
    **fields: Any,
) -> Rig:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    values: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0},
        "tracing": {"enabled": True},
        "security": {"mtls": False},  # dialled in-process, as in tests/support.py
        "backends": {"simulated": FAST_BACKEND, **backends},
    }
    settings = load_settings(
        ProviderSettings, "provider", data={"provider": deep_merge(values, fields)}
    )
    host = await stack.start(
        build_provider(settings, tracer_provider=tracer_provider, environ={KEY_ENV: KEY})
    )
    stub = provider_pb2_grpc.ProviderServiceStub(stack.channel(host))
    return Rig(host=host, stub=stub, spans=exporter, fakes=fakes)


@pytest.fixture
async def oa_fake() -> AsyncIterator[OpenAIFake]:
    fake = OpenAIFake(FakeBehaviour(api_key=KEY, answer_tokens=ANSWER))
    async with fake:
        yield fake


@pytest.fixture
async def an_fake() -> AsyncIterator[AnthropicFake]:
    fake = AnthropicFake(FakeBehaviour(api_key=KEY, answer_tokens=ANSWER))
    async with fake:
        yield fake


@pytest.fixture
async def rig(stack: ServiceStack, oa_fake: OpenAIFake, an_fake: AnthropicFake) -> Rig:
    return await start_rig(
        stack,
        {"oa": oa_fake, "an": an_fake},
        {"oa": http_backend("openai", oa_fake), "an": http_backend("anthropic", an_fake)},
        # These tests assert how paced streams are split into events; coalescing depends
        # on how loaded the machine is, and has a test of its own.
        coalescing={"enabled": False},
    )


def request(backend: str, **fields: Any) -> provider_pb2.StreamRequest:
    return provider_pb2.StreamRequest(
        request_id="r-1",
        backend=backend,
        messages=[common_pb2.Message(role="user", content=PROMPT)],
        **fields,
    )


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(call)
    return caught.value


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def operations_ended(port: int, backend: str, error_type: str) -> float:
    """Upstream calls the GenAI duration histogram counted as ending with `error_type`."""
    return await metric(
        port,
        "gen_ai_client_operation_duration_seconds_count",
        backend=backend,
        error_type=error_type,
    )


BOTH = pytest.mark.parametrize("backend", ["oa", "an"])


# -- streaming, usage, mapping --------------------------------------------------------


@BOTH
async def test_stream_text_with_exact_usage(rig: Rig, backend: str) -> None:
    rig.fake(backend).behaviour.cached_tokens = 3
    events = await collect(rig.stub.Stream(request(backend, max_tokens=100)))

    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert set(kinds[1:-1]) == {"delta"}
    assert events[0].start.backend == backend
    deltas = [e.delta for e in events if e.HasField("delta")]
    text = "".join(d.text for d in deltas)
    assert text.split() == text.split(" ") and len(text.split()) == ANSWER
    assert sum(d.token_count for d in deltas) == ANSWER
    end = events[-1].end
    assert end.finish_reason == common_pb2.FINISH_REASON_STOP
    usage = end.usage
    assert not usage.estimated
    assert usage.output_tokens == ANSWER
    assert usage.cached_input_tokens == 3
    # Anthropic's input_tokens excludes cache reads; ours is the whole prompt.
    assert usage.input_tokens == (7 if backend == "oa" else 10)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens

    sent = rig.fake(backend).behaviour.requests[-1]
    headers = rig.fake(backend).behaviour.headers[-1]
    assert sent["stream"] is True
    if backend == "oa":
        assert sent["stream_options"] == {"include_usage": True}
        assert sent["max_tokens"] == 100
        assert headers["Authorization"] == f"Bearer {KEY}"
    else:
        assert sent["max_tokens"] == 100
        assert headers["x-api-key"] == KEY
        assert headers["anthropic-version"] == "2023-06-01"


@BOTH
async def test_a_caller_that_asks_gets_start_on_the_first_output(rig: Rig, backend: str) -> None:
    # One message fewer before the first token: the acceptance rides on the first delta.
    plain = await collect(rig.stub.Stream(request(backend, max_tokens=100)))
    merged = await collect(
        rig.stub.Stream(request(backend, max_tokens=100, start_with_first_output=True))
    )

    kinds = [e.WhichOneof("event") for e in merged]
    assert kinds[0] == "delta" and kinds[-1] == "end" and "start" not in kinds
    assert merged[0].started == plain[0].start
    assert merged[0].started.backend == backend
    assert [e.HasField("started") for e in merged].count(True) == 1
    assert not any(e.HasField("started") for e in plain)
    # Deltas that arrive together are coalesced, so compare the text, not the pieces.
    assert "".join(e.delta.text for e in merged) == "".join(e.delta.text for e in plain)
    assert merged[-1].end.usage == plain[-1].end.usage


async def test_a_burst_ends_on_its_last_output_for_a_caller_that_asks(rig: Rig) -> None:
    # A stream that arrives in one piece: the end rides on the last text (one message
    # fewer); a caller that did not ask still gets its own `end` event.
    rig.fake("oa").behaviour.burst = True
    plain = await collect(rig.stub.Stream(request("oa", max_tokens=100)))
    asked = dict(max_tokens=100, start_with_first_output=True, end_with_last_output=True)
    merged = await collect(rig.stub.Stream(request("oa", **asked)))

    assert [e.WhichOneof("event") for e in plain] == ["start", "delta", "end"]
    (event,) = merged
    assert event.WhichOneof("event") == "delta"
    assert event.started == plain[0].start
    assert event.delta == plain[1].delta
    assert event.ended == plain[-1].end
    assert not any(e.HasField("ended") for e in plain)


async def test_text_that_arrives_before_the_end_is_not_held_back(rig: Rig) -> None:
    # Paced tokens (one per 25 ms) go out as they come; only the last carries the end.
    rig.fake("oa").behaviour.tokens_per_second = 40
    asked = dict(start_with_first_output=True, end_with_last_output=True)
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    events = []
    async for event in rig.stub.Stream(request("oa", **asked)):
        arrivals.append(loop.time())
        events.append(event)

    assert [e.WhichOneof("event") for e in events] == ["delta"] * ANSWER
    assert [e.HasField("ended") for e in events] == [False] * (ANSWER - 1) + [True]
    assert events[-1].ended.usage.output_tokens == ANSWER
    # Held back, the text would arrive all at once at the end.
    assert arrivals[-1] - arrivals[0] >= 0.08


async def test_under_load_paced_tokens_travel_together(
    stack: ServiceStack, oa_fake: OpenAIFake
) -> None:
    # The load signal is pinned (measured every 10 s here, so not during the test).
    # Loaded, the stream waits 100 ms after each message, so tokens 20 ms apart arrive
    # in two deltas (the first at once, then the rest); idle, each token is its own
    # delta. The same text and usage either way.
    rig = await start_rig(
        stack,
        {"oa": oa_fake},
        {"oa": http_backend("openai", oa_fake)},
        coalescing={"max_delay_ms": 100, "sample_interval_ms": 10_000},
    )
    oa_fake.behaviour.tokens_per_second = 50
    load = rig.host.coalescer  # type: ignore[attr-defined]

    idle = await collect(rig.stub.Stream(request("oa")))
    load.wait_share = 1.0
    loaded = await collect(rig.stub.Stream(request("oa")))

    idle_deltas = [e.delta for e in idle if e.HasField("delta")]
    loaded_deltas = [e.delta for e in loaded if e.HasField("delta")]
    assert len(idle_deltas) == ANSWER
    assert len(loaded_deltas) <= 3
    assert loaded_deltas[0].token_count == 1  # the first token is never held
    assert "".join(d.text for d in loaded_deltas) == "".join(d.text for d in idle_deltas)
    assert sum(d.token_count for d in loaded_deltas) == ANSWER
    assert loaded[-1].end.usage == idle[-1].end.usage
    assert load.pauses._value.get() >= 1


@BOTH
async def test_a_caller_that_waits_for_the_whole_answer_gets_one_event(
    rig: Rig, backend: str
) -> None:
    # A non-streaming client: one upstream JSON body and one provider message instead
    # of a stream of chunks, with the same text and usage.
    plain = await collect(rig.stub.Stream(request(backend, max_tokens=100)))
    whole = await collect(
        rig.stub.Stream(
            request(backend, max_tokens=100, whole_answer=True, start_with_first_output=True)
        )
    )

    (event,) = whole
    assert event.WhichOneof("event") == "delta"
    assert event.started == plain[0].start
    assert event.delta.text == "".join(e.delta.text for e in plain)
    assert event.delta.token_count == ANSWER
    assert event.ended == plain[-1].end
    assert not event.ended.usage.estimated
    sent = rig.fake(backend).behaviour.requests[-1]
    assert not sent.get("stream") and "stream_options" not in sent
    headers = rig.fake(backend).behaviour.headers[-1]
    assert headers["Accept"] == "application/json"


@BOTH
async def test_a_whole_answer_of_tool_calls_starts_on_the_first_and_ends_on_the_last(
    rig: Rig, backend: str
) -> None:
    events = await collect(rig.stub.Stream(request(backend, tools=[TOOL], whole_answer=True)))

    assert all(e.WhichOneof("event") == "tool_call" for e in events)
    assert [e.HasField("started") for e in events] == [True] + [False] * (len(events) - 1)
    assert [e.HasField("ended") for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1].ended.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    arguments = "".join(e.tool_call.arguments_delta for e in events)
    assert json.loads(arguments) == {"query": PROMPT}


async def test_an_empty_whole_answer_is_one_end_event(rig: Rig) -> None:
    rig.fake("oa").behaviour.fault = "empty_answer"

    events = await collect(rig.stub.Stream(request("oa", whole_answer=True)))

    (event,) = events
    assert event.WhichOneof("event") == "end"
    assert event.started.backend == "oa"
    assert event.end.usage.output_tokens == 0


async def test_a_whole_answer_waits_past_the_first_token_limit_but_not_the_total(
    stack: ServiceStack, oa_fake: OpenAIFake
) -> None:
    # A whole answer arrives when it is done: a long answer is not a silent back end.
    backend = http_backend("openai", oa_fake, timeouts={"first_token_s": 0.2, "total_s": 0.8})
    rig = await start_rig(stack, {"oa": oa_fake}, {"oa": backend})
    oa_fake.behaviour.head_delay_ms = 400

    (event,) = await collect(rig.stub.Stream(request("oa", whole_answer=True)))
    streamed = await failure(rig.stub.Stream(request("oa")))
    oa_fake.behaviour.head_delay_ms = 3_000
    too_long = await failure(rig.stub.Stream(request("oa", whole_answer=True)))

    assert event.ended.usage.output_tokens == ANSWER
    assert error_info(streamed).metadata["timeout"] == "first_token"
    assert too_long.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(too_long).metadata["timeout"] == "total"


@BOTH
async def test_a_malformed_whole_answer_is_invalid_response_with_nothing_sent(
    rig: Rig, backend: str
) -> None:
    rig.fake(backend).behaviour.fault = "malformed_json"
    call = rig.stub.Stream(request(backend, whole_answer=True))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            received.append(event)

    assert received == []  # not even the acceptance: it rides on the answer
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "INVALID_RESPONSE"


async def test_a_caller_that_leaves_a_whole_answer_cancels_the_upstream_call(rig: Rig) -> None:
    rig.fake("oa").behaviour.head_delay_ms = 5_000
    call = rig.stub.Stream(request("oa", whole_answer=True))
    waiting = asyncio.ensure_future(collect(call))
    await asyncio.sleep(0.3)  # the upstream request is out; its answer is 5 s away
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting

    port = rig.host.metrics_port
    cancelled = await eventually(
        lambda: metric(port, "sluice_provider_streams_total", backend="oa", outcome="cancelled"),
        lambda value: value == 1,
    )
    assert cancelled == 1
    assert await operations_ended(port, "oa", "CANCELLED") == 1


@BOTH
async def test_a_whole_answer_refused_upstream_is_the_same_typed_error(
    rig: Rig, backend: str
) -> None:
    rig.fake(backend).behaviour.fault = "rate_limit"

    err = await failure(rig.stub.Stream(request(backend, whole_answer=True)))

    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err).reason == "RATE_LIMIT_EXCEEDED"


@BOTH
async def test_model_mapping_and_default(rig: Rig, backend: str) -> None:
    mapped = await collect(rig.stub.Stream(request(backend, model="fast")))
    default = await collect(rig.stub.Stream(request(backend)))
    other = await collect(rig.stub.Stream(request(backend, model="as-is")))

    seen = [r["model"] for r in rig.fake(backend).behaviour.requests]
    fast, base = ("gpt-4o", "gpt-4o-mini") if backend == "oa" else ("claude-fast", "claude-x")
    assert seen == [fast, base, "as-is"]
    assert [m[0].start.model for m in (mapped, default, other)] == seen


@BOTH
async def test_max_tokens_finish_is_length(rig: Rig, backend: str) -> None:
    events = await collect(rig.stub.Stream(request(backend, max_tokens=2)))
    assert events[-1].end.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert events[-1].end.usage.output_tokens == 2


@BOTH
async def test_tool_calls_are_their_own_events(rig: Rig, backend: str) -> None:
    events = await collect(rig.stub.Stream(request(backend, tools=[TOOL])))

    calls = [e.tool_call for e in events if e.HasField("tool_call")]
    assert len(calls) >= 2
    assert (calls[0].id, calls[0].name) == (
        ("call_fake0", "lookup") if backend == "oa" else ("toolu_fake0", "lookup")
    )
    assert {c.index for c in calls} == {0}
    assert all(not c.id and not c.name for c in calls[1:])
    arguments = "".join(c.arguments_delta for c in calls)
    assert json.loads(arguments) == {"query": PROMPT}
    assert events[-1].end.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    sent = rig.fake(backend).behaviour.requests[-1]["tools"][0]
    assert (sent["function"]["name"] if backend == "oa" else sent["name"]) == "lookup"

    (span,) = [s for s in rig.client_spans() if attrs(s).get("gen_ai.tool.name")]
    assert attrs(span)["gen_ai.tool.name"] == "lookup"


async def test_openai_without_streaming(
    stack: ServiceStack, oa_fake: OpenAIFake, an_fake: AnthropicFake
) -> None:
    rig = await start_rig(
        stack,
        {"oa": oa_fake, "an": an_fake},
        {
            "oa": http_backend("openai", oa_fake, stream=False),
            "an": http_backend("anthropic", an_fake, stream=False),
        },
    )
    for backend in ("oa", "an"):
        events = await collect(rig.stub.Stream(request(backend)))
        assert [e.WhichOneof("event") for e in events] == ["start", "delta", "end"]  # one body
        assert len(events[1].delta.text.split()) == ANSWER
        assert events[-1].end.usage.output_tokens == ANSWER
        assert not events[-1].end.usage.estimated
        assert "stream_options" not in rig.fake(backend).behaviour.requests[-1]


async def test_server_without_usage_gets_a_flagged_estimate(rig: Rig) -> None:
    rig.fake("oa").behaviour.fault = "no_usage"
    events = await collect(rig.stub.Stream(request("oa")))

    usage = events[-1].end.usage
    assert usage.estimated
    assert usage.input_tokens == 7 and usage.output_tokens == ANSWER
    assert (
        await metric(
            rig.host.metrics_port,
            "sluice_provider_upstream_tokens_total",
            backend="oa",
            type="output",
            estimated="true",
        )
        == ANSWER
    )


# -- error translation: one test per row of the list --------------------------


ROWS = [
    # (fault, backend, gRPC code, reason)
    ("unauthorized", "oa", grpc.StatusCode.UNAUTHENTICATED, "AUTHORIZATION_ERROR"),
    ("unauthorized", "an", grpc.StatusCode.UNAUTHENTICATED, "AUTHORIZATION_ERROR"),
    ("forbidden", "oa", grpc.StatusCode.PERMISSION_DENIED, "AUTHORIZATION_ERROR"),
    ("forbidden", "an", grpc.StatusCode.PERMISSION_DENIED, "AUTHORIZATION_ERROR"),
    ("model_not_found", "oa", grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR"),
    ("model_not_found", "an", grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR"),
    ("context_length", "oa", grpc.StatusCode.INVALID_ARGUMENT, "TOKEN_LIMIT_EXCEEDED"),
    ("context_length", "an", grpc.StatusCode.INVALID_ARGUMENT, "TOKEN_LIMIT_EXCEEDED"),
    # The client's request refused by the back end: a client error, never INTERNAL (the
    # router would count that against the back end's breaker).
    ("bad_request", "oa", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUT"),
    ("bad_request", "an", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUT"),
    ("request_timeout", "oa", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ("request_timeout", "an", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ("rate_limit", "oa", grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMIT_EXCEEDED"),
    ("rate_limit", "an", grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMIT_EXCEEDED"),
    ("server_error", "oa", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ("server_error", "an", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ("bad_gateway", "oa", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ("unavailable", "oa", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ("unavailable", "an", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ("overloaded", "an", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ("reset", "oa", grpc.StatusCode.UNAVAILABLE, "NETWORK_FAILURE"),
    ("reset", "an", grpc.StatusCode.UNAVAILABLE, "NETWORK_FAILURE"),
    ("reset_mid_stream", "oa", grpc.StatusCode.UNAVAILABLE, "NETWORK_FAILURE"),
    ("reset_mid_stream", "an", grpc.StatusCode.UNAVAILABLE, "NETWORK_FAILURE"),
    ("malformed_json", "oa", grpc.StatusCode.UNAVAILABLE, "INVALID_RESPONSE"),
    ("malformed_json", "an", grpc.StatusCode.UNAVAILABLE, "INVALID_RESPONSE"),
    ("malformed_event", "oa", grpc.StatusCode.UNAVAILABLE, "INVALID_RESPONSE"),
    ("malformed_event", "an", grpc.StatusCode.UNAVAILABLE, "INVALID_RESPONSE"),
    ("truncated", "oa", grpc.StatusCode.UNAVAILABLE, "INVALID_RESPONSE"),
    ("truncated", "an", grpc.StatusCode.UNAVAILABLE, "INVALID_RESPONSE"),
    ("stream_error", "oa", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ("stream_error", "an", grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
]


@pytest.mark.parametrize(("fault", "backend", "code", "reason"), ROWS)
async def test_upstream_error_translation(
    rig: Rig, fault: str, backend: str, code: grpc.StatusCode, reason: str
) -> None:
    behaviour = rig.fake(backend).behaviour
    behaviour.fault, behaviour.fault_after = fault, 2

    err = await failure(rig.stub.Stream(request(backend)))

    assert err.code() == code, err.details()
    info = error_info(err)
    assert info.reason == reason
    assert info.metadata["backend"] == backend
    status = rich_status(err)
    retry = details_of(status, error_details_pb2.RetryInfo)
    if fault == "rate_limit":
        assert retry[0].retry_delay.seconds == 7
        assert info.metadata["upstream_status"] == "429"
        assert info.metadata["remaining_requests" if backend == "an" else "remaining_tokens"] == "0"
    elif fault == "overloaded":
        assert retry[0].retry_delay.seconds == 7
        assert info.metadata["upstream_status"] == "529"
        assert info.metadata["upstream_error_type"] == "overloaded_error"
    else:
        assert retry == []
    if fault == "stream_error" and backend == "an":
        assert info.metadata["upstream_error_type"] == "overloaded_error"
    if fault == "context_length":
        assert "context length" in err.details()
    assert KEY not in err.details() and KEY not in str(dict(info.metadata))
    (span,) = rig.client_spans()
    assert attrs(span)["error.type"] == reason


async def test_connection_refused_is_network_failure(
    stack: ServiceStack, oa_fake: OpenAIFake
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    backend = http_backend("openai", oa_fake, base_url=f"http://127.0.0.1:{closed_port}/v1")
    rig = await start_rig(stack, {"oa": oa_fake}, {"oa": backend})

    err = await failure(rig.stub.Stream(request("oa")))

    assert err.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(err)
    assert info.reason == "NETWORK_FAILURE"
    assert info.metadata["transport_error"] == "ConnectError"


async def test_a_connect_that_never_completes_is_network_failure_not_a_token_timeout(
    stack: ServiceStack, oa_fake: OpenAIFake
) -> None:
    # A listener whose accept queue is full: further SYNs are dropped, connect() hangs.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        try:
            backend = http_backend(
                "openai",
                oa_fake,
                base_url=f"http://127.0.0.1:{port}/v1",
                timeouts={"connect_s": 0.3, "first_token_s": 5},
            )
            rig = await start_rig(stack, {"oa": oa_fake}, {"oa": backend})
            started = time.monotonic()
            err = await failure(rig.stub.Stream(request("oa")))
            took = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()

    info = error_info(err)
    assert info.reason == "NETWORK_FAILURE", info
    assert info.metadata["transport_error"] == "ConnectTimeout"
    assert took < 3  # the connect limit, not the first-token one


@BOTH
async def test_first_token_timeout(
    stack: ServiceStack, oa_fake: OpenAIFake, an_fake: AnthropicFake, backend: str
) -> None:
    fakes: dict[str, FakeServer] = {"oa": oa_fake, "an": an_fake}
    kind = "openai" if backend == "oa" else "anthropic"
    settings = http_backend(kind, fakes[backend], timeouts={"first_token_s": 0.2})
    rig = await start_rig(stack, fakes, {backend: settings})
    fakes[backend].behaviour.head_delay_ms = 5_000

    err = await failure(rig.stub.Stream(request(backend)))

    info = error_info(err)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert info.reason == "SERVICE_UNAVAILABLE"
    assert info.metadata["timeout"] == "first_token"


async def test_idle_timeout_mid_stream(stack: ServiceStack, oa_fake: OpenAIFake) -> None:
    rig = await start_rig(
        stack, {"oa": oa_fake}, {"oa": http_backend("openai", oa_fake, timeouts={"idle_s": 0.2})}
    )
    oa_fake.behaviour.fault, oa_fake.behaviour.fault_after = "stall", 3

    call = rig.stub.Stream(request("oa"))
    err = await failure(call)

    info = error_info(err)
    assert info.reason == "SERVICE_UNAVAILABLE"
    assert info.metadata["timeout"] == "idle"
    assert info.metadata["usage_output_tokens"] == "3"


# -- usage is never lost: kill the stream at each point --------------------------------


KILL_POINTS = [
    # (backend, fault, fault_after, usage recorded: input, input exact?, output, estimated)
    ("oa", "reset_mid_stream", 0, 7, 0, True),
    ("oa", "reset_mid_stream", 3, 7, 3, True),
    ("oa", "reset_mid_stream", ANSWER, 7, ANSWER, True),
    ("oa", "truncated", ANSWER, 7, ANSWER, True),
    ("an", "reset_mid_stream", 0, 7, 0, True),
    ("an", "reset_mid_stream", 3, 7, 3, True),
    ("an", "stream_error", ANSWER, 7, ANSWER, True),
    ("an", "truncated", ANSWER, 7, ANSWER, True),
]


@pytest.mark.parametrize(("backend", "fault", "after", "inp", "out", "estimated"), KILL_POINTS)
async def test_usage_recorded_when_the_stream_dies(
    rig: Rig, backend: str, fault: str, after: int, inp: int, out: int, estimated: bool
) -> None:
    behaviour = rig.fake(backend).behaviour
    behaviour.fault, behaviour.fault_after = fault, after

    err = await failure(rig.stub.Stream(request(backend)))

    metadata = error_info(err).metadata
    assert metadata["usage_input_tokens"] == str(inp)
    assert metadata["usage_output_tokens"] == str(out)
    assert metadata["usage_estimated"] == ("true" if estimated else "false")
    port = rig.host.metrics_port
    assert (
        await metric(port, "sluice_provider_upstream_tokens_total", backend=backend, type="input")
        == inp
    )
    recorded_out = await metric(
        port, "sluice_provider_upstream_tokens_total", backend=backend, type="output"
    )
    assert recorded_out == out
    (span,) = rig.client_spans()
    assert attrs(span)["gen_ai.usage.input_tokens"] == inp
    assert attrs(span)["gen_ai.usage.output_tokens"] == out


async def test_usage_recorded_when_the_client_cancels(rig: Rig) -> None:
    rig.fake("oa").behaviour.tokens_per_second = 50
    rig.fake("oa").behaviour.answer_tokens = 500
    call = rig.stub.Stream(request("oa", max_tokens=500))
    seen = 0
    async for event in call:
        if event.HasField("delta"):
            seen += 1
            if seen == 3:
                break
    call.cancel()

    port = rig.host.metrics_port
    recorded = await eventually(
        lambda: metric(port, "sluice_provider_upstream_tokens_total", backend="oa", type="output"),
        lambda value: value >= 3,
    )
    assert 3 <= recorded < 500
    assert recorded == await metric(
        port, "sluice_provider_upstream_tokens_total", backend="oa", type="output", estimated="true"
    )
    assert await operations_ended(port, "oa", "CANCELLED") == 1


# -- spans and metrics ------------------------------------------------------------------


@BOTH
async def test_genai_span_and_metrics(rig: Rig, backend: str) -> None:
    await collect(rig.stub.Stream(request(backend, max_tokens=50, temperature=0.5)))

    (span,) = rig.client_spans()
    model = "gpt-4o-mini" if backend == "oa" else "claude-x"
    assert span.name == f"chat {model}"
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == ("openai" if backend == "oa" else "anthropic")
    assert attributes["gen_ai.request.model"] == model
    assert attributes["gen_ai.response.model"] == model
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.usage.input_tokens"] == 7
    assert attributes["gen_ai.usage.output_tokens"] == ANSWER
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == rig.fake(backend).port
    assert "gen_ai.input.messages" not in attributes
    assert "gen_ai.output.messages" not in attributes
    assert all(PROMPT not in str(value) for value in attributes.values())
    assert span.parent is not None  # a child of the provider's server span

    port = rig.host.metrics_port
    labels = {"gen_ai_request_model": model, "backend": backend}
    assert (
        await metric(port, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **labels)
        == ANSWER
    )
    assert (
        await metric(port, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **labels)
        == 7
    )
    assert await metric(port, "gen_ai_client_operation_duration_seconds_count", **labels) == 1
    assert await metric(port, "gen_ai_client_time_to_first_chunk_seconds_count", **labels) == 1


async def test_content_recorded_only_when_enabled(stack: ServiceStack, oa_fake: OpenAIFake) -> None:
    rig = await start_rig(
        stack, {"oa": oa_fake}, {"oa": http_backend("openai", oa_fake, record_content=True)}
    )
    events = await collect(rig.stub.Stream(request("oa")))
    text = "".join(e.delta.text for e in events if e.HasField("delta"))

    (span,) = rig.client_spans()
    assert PROMPT in str(attrs(span)["gen_ai.input.messages"])
    assert json.loads(str(attrs(span)["gen_ai.output.messages"]))[0]["content"] == text


# -- secrets -----------------------------------------------------------------------------


async def test_planted_key_never_in_logs_spans_or_errors(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen_errors: list[str] = []
    await collect(rig.stub.Stream(request("oa")))
    await collect(rig.stub.Stream(request("an")))
    for backend in ("oa", "an"):
        behaviour = rig.fake(backend).behaviour
        for fault in ("unauthorized", "context_length", "rate_limit", "stream_error", "reset"):
            behaviour.fault, behaviour.fault_after = fault, 1
            err = await failure(rig.stub.Stream(request(backend)))
            seen_errors.append(err.details() or "")
            seen_errors.append(str(rich_status(err)))
        # A key the upstream rejects is echoed back (masked) by OpenAI: still never shown.
        behaviour.fault = None
        behaviour.api_key = "sk-other-key"
        err = await failure(rig.stub.Stream(request(backend)))
        seen_errors.append(str(rich_status(err)))
        behaviour.api_key = KEY

    exported = [
        json.dumps(
            {
                "name": s.name,
                "attributes": {k: str(v) for k, v in (s.attributes or {}).items()},
                "events": [str(e.attributes) for e in s.events],
                "status": str(s.status.description),
            }
        )
        for s in rig.spans.get_finished_spans()
    ]
    assert len(rig.client_spans()) == 14
    haystacks = {
        "logs": caplog.text,
        "spans": "\n".join(exported),
        "errors": "\n".join(seen_errors),
    }
    for where, text in haystacks.items():
        assert KEY not in text, where
        assert KEY[-8:] not in text, where  # not even a provider-style masked fragment
    assert KEY not in repr(rig.host.settings)
    assert KEY not in await metric_text(rig.host.metrics_port)


async def metric_text(port: int) -> str:
    return await scrape(port)


# -- pacing -------------------------------------------------------------------------------


async def test_pacing_holds_requests_over_the_quota(
    stack: ServiceStack, oa_fake: OpenAIFake
) -> None:
    rig = await start_rig(
        stack,
        {"oa": oa_fake},
        {"oa": http_backend("openai", oa_fake, pacing={"requests_per_minute": 2})},
    )
    await collect(rig.stub.Stream(request("oa")))
    await collect(rig.stub.Stream(request("oa")))
    assert len(oa_fake.behaviour.requests) == 2

    third = rig.stub.Stream(request("oa"))
    # Over the quota: the third request waits in Sluice and never reaches the upstream.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(third.read(), timeout=0.3)
    third.cancel()
    assert len(oa_fake.behaviour.requests) == 2


# -- start-up ---------------------------------------------------------------------------------


async def test_missing_key_stops_the_service_naming_the_variable(tmp_path: Any) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(
        "provider:\n"
        "  server: {host: 127.0.0.1, port: 0, metrics_port: 0}\n"
        "  security: {mtls: false}\n"
        "  backends:\n"
        "    oa: {kind: openai, base_url: 'http://127.0.0.1:1/v1', model: m,\n"
        "         api_key_env: SLUICE_TEST_ABSENT_KEY}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_TEST_ABSENT_KEY"}
    env["SLUICE_CONFIG"] = str(config)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sluice.provider",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    message = stderr.decode()
    assert "provider.backends.oa: environment variable SLUICE_TEST_ABSENT_KEY is not set" in message
    assert "Traceback" not in message


async def test_total_timeout_ends_a_slow_but_steady_stream(
    stack: ServiceStack, an_fake: AnthropicFake
) -> None:
    backend = http_backend(
        "anthropic", an_fake, timeouts={"first_token_s": 5, "idle_s": 5, "total_s": 0.4}
    )
    rig = await start_rig(stack, {"an": an_fake}, {"an": backend})
    an_fake.behaviour.tokens_per_second = 20  # never idle for long, never finished in time
    an_fake.behaviour.answer_tokens = 100

    err = await failure(rig.stub.Stream(request("an", max_tokens=100)))

    info = error_info(err)
    assert info.reason == "SERVICE_UNAVAILABLE"
    assert info.metadata["timeout"] == "total"
    assert info.metadata["usage_input_tokens"] == "7"  # exact, from message_start
    assert 1 <= int(info.metadata["usage_output_tokens"]) < 100


@BOTH
async def test_a_refused_call_records_no_usage(rig: Rig, backend: str) -> None:
    rig.fake(backend).behaviour.fault = "rate_limit"

    err = await failure(rig.stub.Stream(request(backend)))

    metadata = error_info(err).metadata
    assert (metadata["usage_input_tokens"], metadata["usage_output_tokens"]) == ("0", "0")
    port = rig.host.metrics_port
    assert await metric(port, "sluice_provider_upstream_tokens_total", backend=backend) == 0
    assert await operations_ended(port, backend, "RATE_LIMIT_EXCEEDED") == 1


async def test_non_streaming_body_timeout(stack: ServiceStack, oa_fake: OpenAIFake) -> None:
    backend = http_backend("openai", oa_fake, stream=False, timeouts={"first_token_s": 0.2})
    rig = await start_rig(stack, {"oa": oa_fake}, {"oa": backend})
    oa_fake.behaviour.head_delay_ms = 5_000

    err = await failure(rig.stub.Stream(request("oa")))

    assert error_info(err).metadata["timeout"] == "first_token"


async def test_list_backends_names_every_kind(rig: Rig) -> None:
    listed = await rig.stub.ListBackends(provider_pb2.ListBackendsRequest())
    assert {(b.name, b.kind) for b in listed.backends} == {
        ("simulated", "simulated"),
        ("oa", "openai"),
        ("an", "anthropic"),
    }
