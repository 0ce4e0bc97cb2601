"""The OpenAI-compatible HTTP API, driven by the official `openai` Python SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from sluice.limiter.service import build_server as build_limiter
from sluice.provider.service import build_server as build_provider
from sluice.router.wiring import RouterHost
from sluice.router.wiring import build_server as build_router
from tests.support import (
    API_KEY,
    SLOW_BACKEND,
    ServiceStack,
    Suite,
    eventually,
    limiter_settings,
    metric,
    provider_settings,
    router_settings,
    start_suite,
)

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about sluices"}]


def base_url(router: RouterHost) -> str:
    return f"http://127.0.0.1:{router.http_port}/v1"


def client(suite: Suite, key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=base_url(suite.router), max_retries=0)


def sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


async def test_plain_chat_returns_text_usage_and_finish_reason(suite: Suite) -> None:
    async with client(suite) as sdk:
        reply = await sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=12)
    assert reply.object == "chat.completion"
    assert reply.model == "default"
    assert reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 12
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


async def test_streaming_chunks_concatenate_to_the_unary_answer(suite: Suite) -> None:
    async with client(suite) as sdk:
        unary = await sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=16)
        stream = await sdk.chat.completions.create(
            model="default",
            messages=MESSAGES,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    # include_usage: one last chunk with no choices carries the usage; the others null.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_wire_format_ends_with_done(suite: Suite) -> None:
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 8, "stream": True}
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            f"{base_url(suite.router)}/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {API_KEY}"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    assert response.headers["x-sluice-fallback-step"] == "FALLBACK_STEP_PRIMARY"
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    assert data.count("[DONE]") == 1
    chunks = [json.loads(d) for d in data[:-1]]
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage
    assert response.text.endswith("data: [DONE]\n\n")


async def test_models_list_in_openai_shape(suite: Suite) -> None:
    async with client(suite) as sdk:
        models = await sdk.models.list()
    assert [m.id for m in models.data] == ["default"]
    assert models.data[0].object == "model"


async def test_bad_key_is_the_sdks_authentication_error(suite: Suite) -> None:
    async with client(suite, key="sk-wrong") as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model="default", messages=MESSAGES)
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()
    assert caught.value.status_code == 401
    assert caught.value.request_id  # errors carry x-request-id too, as OpenAI's do
    assert caught.value.body["type"] == "authentication_error"  # type: ignore[index]
    assert caught.value.code == "authorization_error"  # the reason, docs/errors.md


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"messages": []}, "messages"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"n": 3}, "n"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ],
)
async def test_bad_requests_are_the_sdks_bad_request_error(
    suite: Suite, fields: dict[str, object], param: str
) -> None:
    body: dict[str, object] = {"model": "default", "messages": MESSAGES, **fields}
    async with client(suite) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(**body)  # type: ignore[call-overload]
        with pytest.raises(openai.BadRequestError):
            await sdk.chat.completions.create(**body, stream=True)  # type: ignore[call-overload]
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert caught.value.body["param"] == param  # type: ignore[index]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b""])
async def test_malformed_bodies_are_400_in_openai_shape(suite: Suite, raw: bytes) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            f"{base_url(suite.router)}/chat/completions",
            content=raw,
            headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]


HOSTILE_BODIES = {
    # issue 16 item 3: each was a 500 with a traceback in the router's log.
    "nested 50,000 deep": b'{"model": "default", "messages": '
    + b"[" * 50_000
    + b"]" * 50_000
    + b"}",
    "temperature of 400 digits": b'{"model": "default", "messages": [{"role": "user", '
    b'"content": "hi"}], "temperature": ' + b"9" * 400 + b"}",
    "NaN temperature": b'{"model": "default", "messages": [{"role": "user", "content": "hi"}], '
    b'"temperature": NaN}',
    "not UTF-8": b'{"model": "default\xff", "messages": []}',
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
async def test_hostile_bodies_are_typed_400s_never_500s(suite: Suite, name: str) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            f"{base_url(suite.router)}/chat/completions",
            content=HOSTILE_BODIES[name],
            headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "validation_error"
    assert error["param"] in {"body", "temperature"}


async def test_rate_limit_is_the_sdks_rate_limit_error_with_retry_after(
    stack: ServiceStack,
) -> None:
    suite = await start_suite(
        stack, limiter={"per_key": {"capacity": 1, "refill_per_second": 0.01}}
    )
    async with client(suite) as sdk:
        await sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=4)
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=4)
    assert caught.value.status_code == 429
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 101
    assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]


async def test_client_disconnect_cancels_the_provider_stream(stack: ServiceStack) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)
    provider_port = suite.provider.metrics_port
    labels = {"backend": "simulated", "outcome": "cancelled"}
    before = await metric(provider_port, "sluice_provider_streams_total", **labels)
    async with client(suite) as sdk:
        stream = await sdk.chat.completions.create(
            model="default", messages=MESSAGES, max_tokens=2000, stream=True
        )
        received = 0
        async for _ in stream:
            received += 1
            if received == 3:
                break
        await stream.close()

    async def cancelled() -> float:
        return await metric(provider_port, "sluice_provider_streams_total", **labels)

    assert await eventually(cancelled, lambda n: n > before) == before + 1
    assert await metric(provider_port, "sluice_provider_streams_total", outcome="completed") == 0


async def test_mid_stream_failure_raises_in_the_sdk(stack: ServiceStack) -> None:
    limiter = await stack.start(build_limiter(limiter_settings()))
    provider = await stack.start(build_provider(provider_settings(fault_injection=True)))
    router = await stack.start(build_router(router_settings(limiter, provider)))
    sdk = openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url(router), max_retries=0)
    async with sdk:
        stream = await sdk.chat.completions.create(
            model="default",
            messages=MESSAGES,
            max_tokens=40,
            stream=True,
            extra_headers={"x-sluice-fault": "drop_after_tokens=3"},
        )
        texts: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                texts.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(texts)  # tokens arrived before the failure: never a silent clean end
    assert caught.value.body == {
        "message": caught.value.message,
        "type": "server_error",
        "param": None,
        "code": "service_unavailable",
    }
