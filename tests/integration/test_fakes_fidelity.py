"""The fakes speak the providers' real formats: the official SDKs parse them.

If `openai` and `anthropic` (the vendors' own Python clients) read a fake's stream,
usage, tool calls and errors into their typed objects, the fake is faithful enough to
prove our adapters against.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam, ToolParam
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.common import FakeBehaviour
from tests.fakes.openai_fake import OpenAIFake

KEY = "sk-fidelity-0123456789"
TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
ANTHROPIC_TOOL: ToolParam = {
    "name": "lookup",
    "description": "Look something up.",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}


@pytest.fixture
async def oa_fake() -> AsyncIterator[OpenAIFake]:
    fake = OpenAIFake(FakeBehaviour(api_key=KEY, answer_tokens=5))
    async with fake:
        yield fake


@pytest.fixture
async def an_fake() -> AsyncIterator[AnthropicFake]:
    fake = AnthropicFake(FakeBehaviour(api_key=KEY, answer_tokens=5))
    async with fake:
        yield fake


@pytest.fixture
async def oa(oa_fake: OpenAIFake) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(api_key=KEY, base_url=oa_fake.base_url, max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def an(an_fake: AnthropicFake) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        api_key=KEY, base_url=an_fake.base_url.removesuffix("/v1"), max_retries=0
    )
    yield client
    await client.close()


USER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "how does a sluice gate work?"}
]
AN_USER: list[MessageParam] = [{"role": "user", "content": "how does a sluice gate work?"}]


# -- OpenAI -------------------------------------------------------------------------


async def test_openai_stream_parses_with_usage(oa: openai.AsyncOpenAI) -> None:
    stream = await oa.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 5
    assert usage.prompt_tokens == 7  # how does a sluice gate work ?
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


async def test_openai_non_streaming_and_models(oa: openai.AsyncOpenAI) -> None:
    completion = await oa.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=3)
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    models = [m.id async for m in oa.models.list()]
    assert "gpt-4o-mini" in models


async def test_openai_tool_call_deltas(oa: openai.AsyncOpenAI) -> None:
    stream = await oa.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        tools=[TOOL],
        stream=True,
    )
    calls = [c.choices[0].delta.tool_calls async for c in stream if c.choices]
    pieces = [call for delta in calls if delta for call in delta]
    assert pieces[0].id == "call_fake0" and pieces[0].function is not None
    assert pieces[0].function.name == "lookup"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert arguments == '{"query": "how does a sluice gate work?"}'


@pytest.mark.parametrize(
    ("fault", "error_type", "status"),
    [
        ("unauthorized", openai.AuthenticationError, 401),
        ("forbidden", openai.PermissionDeniedError, 403),
        ("model_not_found", openai.NotFoundError, 404),
        ("context_length", openai.BadRequestError, 400),
        ("request_timeout", openai.APIStatusError, 408),
        ("rate_limit", openai.RateLimitError, 429),
        ("server_error", openai.InternalServerError, 500),
        ("bad_gateway", openai.InternalServerError, 502),
        ("unavailable", openai.InternalServerError, 503),
    ],
)
async def test_openai_errors_parse(
    oa_fake: OpenAIFake,
    oa: openai.AsyncOpenAI,
    fault: str,
    error_type: type[openai.APIStatusError],
    status: int,
) -> None:
    oa_fake.behaviour.fault = fault
    with pytest.raises(error_type) as caught:
        await oa.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["message"]  # the SDK unwrapped {"error": {...}}
    if fault == "context_length":
        assert caught.value.code == "context_length_exceeded"
    if fault == "rate_limit":
        headers = caught.value.response.headers
        assert headers["retry-after"] == "7"
        assert headers["x-ratelimit-remaining-tokens"] == "0"


async def test_openai_wrong_key_is_401(oa_fake: OpenAIFake) -> None:
    async with openai.AsyncOpenAI(
        api_key="sk-wrong-key-000", base_url=oa_fake.base_url, max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert "sk-wrong-key-000" not in str(caught.value)  # masked, as OpenAI does


async def test_openai_in_stream_error_raises(oa_fake: OpenAIFake, oa: openai.AsyncOpenAI) -> None:
    oa_fake.behaviour.fault, oa_fake.behaviour.fault_after = "stream_error", 2
    stream = await oa.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="error while processing"):
        async for _ in stream:
            pass


async def test_openai_reset_is_a_connection_error(
    oa_fake: OpenAIFake, oa: openai.AsyncOpenAI
) -> None:
    oa_fake.behaviour.fault = "reset"
    with pytest.raises(openai.APIConnectionError):
        await oa.chat.completions.create(model="gpt-4o-mini", messages=USER)


async def test_openai_malformed_stream_fails_to_parse(
    oa_fake: OpenAIFake, oa: openai.AsyncOpenAI
) -> None:
    oa_fake.behaviour.fault, oa_fake.behaviour.fault_after = "malformed_json", 1
    stream = await oa.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    with pytest.raises(ValueError):  # json.JSONDecodeError
        async for _ in stream:
            pass


# -- Anthropic ----------------------------------------------------------------------


async def test_anthropic_stream_parses_with_usage(an: anthropic.AsyncAnthropic) -> None:
    async with an.messages.stream(
        model="claude-x",
        max_tokens=100,
        messages=AN_USER,
    ) as stream:
        types = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(types)
    assert "message_delta" in types
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 7 and final.usage.output_tokens == 5
    assert final.usage.cache_read_input_tokens == 0
    assert final.content[0].type == "text" and len(final.content[0].text.split()) == 5


async def test_anthropic_non_streaming(an: anthropic.AsyncAnthropic) -> None:
    message = await an.messages.create(model="claude-x", max_tokens=2, messages=AN_USER)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


async def test_anthropic_tool_use_stream(an: anthropic.AsyncAnthropic) -> None:
    async with an.messages.stream(
        model="claude-x",
        max_tokens=100,
        messages=AN_USER,
        tools=[ANTHROPIC_TOOL],
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use" and block.name == "lookup"
    assert block.input == {"query": "how does a sluice gate work?"}


@pytest.mark.parametrize(
    ("fault", "error_type", "status", "kind"),
    [
        ("unauthorized", anthropic.AuthenticationError, 401, "authentication_error"),
        ("forbidden", anthropic.PermissionDeniedError, 403, "permission_error"),
        ("model_not_found", anthropic.NotFoundError, 404, "not_found_error"),
        ("context_length", anthropic.BadRequestError, 400, "invalid_request_error"),
        ("request_timeout", anthropic.APIStatusError, 408, "timeout_error"),
        ("rate_limit", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("server_error", anthropic.InternalServerError, 500, "api_error"),
        ("overloaded", anthropic.APIStatusError, 529, "overloaded_error"),
    ],
)
async def test_anthropic_errors_parse(
    an_fake: AnthropicFake,
    an: anthropic.AsyncAnthropic,
    fault: str,
    error_type: type[anthropic.APIStatusError],
    status: int,
    kind: str,
) -> None:
    an_fake.behaviour.fault = fault
    with pytest.raises(error_type) as caught:
        await an.messages.create(model="claude-x", max_tokens=10, messages=AN_USER)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == kind
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")
    if fault == "rate_limit":
        assert caught.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


async def test_anthropic_in_stream_error_event(
    an_fake: AnthropicFake, an: anthropic.AsyncAnthropic
) -> None:
    an_fake.behaviour.fault, an_fake.behaviour.fault_after = "stream_error", 2
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with an.messages.stream(model="claude-x", max_tokens=10, messages=AN_USER) as stream:
            async for _ in stream:
                pass


async def test_anthropic_requires_version_header(an_fake: AnthropicFake) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(
            f"{an_fake.base_url}/messages",
            headers={"x-api-key": KEY},
            json={"model": "claude-x", "max_tokens": 5, "messages": USER},
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FakeBehaviour(fault="gremlins")
