"""The OpenAI-compatible API through Envoy (`sluice up`), with the official `openai` SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import DEV_KEY, RunningSuite, start_suite

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about sluices"}]
CANCELLED = {"backend": "simulated", "outcome": "cancelled"}
# Fault injection on, so a request header (`x-sluice-fault`) can provoke a 429.
EDGE_PROVIDER = {
    "fault_injection": True,
    "backends": {
        "simulated": {"time_to_first_token_ms": 20, "tokens_per_second": 40, "answer_tokens": 4000}
    },
}
RATE_LIMIT_FAULT = "rate_limit_rate=1,retry_after_ms=60000"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    with start_suite(tmp_path_factory.mktemp("openai-edge"), provider=EDGE_PROVIDER) as running:
        yield running


def sdk(edge: RunningSuite, key: str = DEV_KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{edge.edge}/v1", max_retries=0, timeout=30)


def provider_streams(edge: RunningSuite, **labels: str) -> float:
    text = httpx.get(edge.metrics_url("provider"), timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sluice_provider_streams_total" and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return float(sample.value)
    return 0.0


def test_plain_and_streamed_chat_through_envoy(edge: RunningSuite) -> None:
    with sdk(edge) as client:
        reply = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=8)
        stream = client.chat.completions.create(
            model="default",
            messages=MESSAGES,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 8
    assert reply.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_stream_ends_with_done_over_http1_and_http2(edge: RunningSuite) -> None:
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    headers = {"authorization": f"Bearer {DEV_KEY}"}
    for http1, http2 in ((True, False), (False, True)):
        with httpx.Client(http1=http1, http2=http2, trust_env=False, timeout=30) as http:
            response = http.post(f"{edge.edge}/v1/chat/completions", json=body, headers=headers)
        assert response.http_version == ("HTTP/1.1" if http1 else "HTTP/2")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.text.endswith("data: [DONE]\n\n")
        assert len(response.headers["x-sluice-trace-id"]) == 32


def test_models_list_through_envoy(edge: RunningSuite) -> None:
    with sdk(edge) as client:
        assert [m.id for m in client.models.list()] == ["default"]


def test_errors_surface_as_the_sdks_exception_types(edge: RunningSuite) -> None:
    with sdk(edge, key="sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="default", messages=MESSAGES)
    with sdk(edge) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="nope", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(
                model="default",
                messages=MESSAGES,
                extra_headers={"x-sluice-fault": RATE_LIMIT_FAULT},
            )
    assert bad.value.body["param"] == "model"  # type: ignore[index]
    assert limited.value.response.headers["retry-after"] == "60"


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_client_disconnect_cancels_the_provider_call(edge: RunningSuite, http2: bool) -> None:
    before = provider_streams(edge, **CANCELLED)
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 2000, "stream": True}
    headers = {"authorization": f"Bearer {DEV_KEY}"}
    with (
        httpx.Client(http1=not http2, http2=http2, trust_env=False, timeout=30) as http,
        http.stream("POST", f"{edge.edge}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        contents = 0
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get(
                "content"
            ):
                contents += 1
                if contents == 2:
                    break  # leaving the block closes the connection / resets the stream
    # The stream would run ~50 s: only a cancellation ends it within the wait.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and provider_streams(edge, **CANCELLED) == before:
        time.sleep(0.05)
    assert provider_streams(edge, **CANCELLED) == before + 1


def test_hostile_bodies_through_envoy_are_typed_400s(edge: RunningSuite) -> None:
    # issue 16 item 3: both were 500s with a traceback in the router's log.
    nested = b'{"model": "default", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    huge = (
        b'{"model": "default", "messages": [{"role": "user", "content": "hi"}], '
        b'"temperature": ' + b"9" * 400 + b"}"
    )
    for body, param in ((nested, "body"), (huge, "temperature")):
        response = httpx.post(
            f"{edge.edge}/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {DEV_KEY}", "content-type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
