"""Router -> provider -> fake OpenAI upstream: tool calls reach the client as events,
and ListModels shows the aliases and back ends a key may use."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sluice.common.v1 import common_pb2
from sluice.limiter.service import build_server as build_limiter
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.wiring import RouterHost
from sluice.router.wiring import build_server as build_router
from tests.fakes.common import FakeBehaviour
from tests.fakes.openai_fake import OpenAIFake
from tests.integration.test_provider_http import KEY, TOOL, http_backend, start_rig
from tests.support import (
    AUTH,
    ServiceStack,
    collect,
    kinds,
    limiter_settings,
    router_settings,
    sha256_hex,
)


@pytest.fixture
async def oa_fake() -> AsyncIterator[OpenAIFake]:
    fake = OpenAIFake(FakeBehaviour(api_key=KEY, answer_tokens=4))
    async with fake:
        yield fake


async def start_router(stack: ServiceStack, oa_fake: OpenAIFake, **fields: Any) -> RouterHost:
    limiter = await stack.start(build_limiter(limiter_settings()))
    rig = await start_rig(stack, {"oa": oa_fake}, {"oa": http_backend("openai", oa_fake)})
    return await stack.start(
        build_router(
            router_settings(
                limiter,
                rig.host,
                api_keys=[
                    {"id": "test", "sha256": sha256_hex("sk-test-key")},
                    {"id": "narrow", "sha256": sha256_hex("sk-narrow"), "models": ["default"]},
                ],
                models={
                    "default": {"backends": [{"backend": "simulated"}]},
                    "gpt": {
                        "backends": [{"backend": "oa", "model": "gpt-4o"}, {"backend": "simulated"}]
                    },
                },
                http_api={"port": 0},
                **fields,
            )
        )
    )


@pytest.fixture
async def router(stack: ServiceStack, oa_fake: OpenAIFake) -> router_pb2_grpc.RouterServiceStub:
    host = await start_router(stack, oa_fake)
    return router_pb2_grpc.RouterServiceStub(stack.channel(host))


async def test_tool_calls_stream_to_the_client(
    router: router_pb2_grpc.RouterServiceStub, oa_fake: OpenAIFake
) -> None:
    events = await collect(
        router.Generate(
            router_pb2.GenerateRequest(
                model="gpt",
                messages=[common_pb2.Message(role="user", content="find the canal depth")],
                tools=[TOOL],
            ),
            metadata=AUTH,
        )
    )

    seen = kinds(events)
    assert seen[0] == "metadata" and seen[-1] == "complete"
    calls = [e.tool_call for e in events if e.HasField("tool_call")]
    assert calls[0].name == "lookup" and calls[0].id == "call_fake0"
    assert json.loads("".join(c.arguments_delta for c in calls)) == {
        "query": "find the canal depth"
    }
    assert events[-1].complete.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert [e.sequence for e in events] == list(range(len(events)))
    assert oa_fake.behaviour.requests[-1]["model"] == "gpt-4o"
    assert oa_fake.behaviour.requests[-1]["tools"][0]["function"]["name"] == "lookup"


async def test_text_through_the_router_has_exact_usage(
    router: router_pb2_grpc.RouterServiceStub,
) -> None:
    events = await collect(
        router.Generate(
            router_pb2.GenerateRequest(
                model="gpt", messages=[common_pb2.Message(role="user", content="hello there")]
            ),
            metadata=AUTH,
        )
    )
    assert events[0].metadata.provider == "oa"
    assert events[0].metadata.provider_model == "gpt-4o"
    usage = events[-1].complete.usage
    assert (usage.input_tokens, usage.output_tokens, usage.estimated) == (2, 4, False)


async def test_list_models_shows_aliases_and_back_ends_per_key(
    router: router_pb2_grpc.RouterServiceStub,
) -> None:
    wide = await router.ListModels(router_pb2.ListModelsRequest(), metadata=AUTH)
    narrow = await router.ListModels(
        router_pb2.ListModelsRequest(), metadata=(("authorization", "Bearer sk-narrow"),)
    )
    assert {m.id: list(m.backends) for m in wide.models} == {
        "default": ["simulated"],
        "gpt": ["oa", "simulated"],
    }
    assert [m.id for m in narrow.models] == ["default"]


# -- whole answers: a non-streaming client's answer in one piece ------------------------

PROMPT = [common_pb2.Message(role="user", content="hello there")]


async def test_a_unary_complete_asks_the_back_end_for_one_body(
    router: router_pb2_grpc.RouterServiceStub, oa_fake: OpenAIFake
) -> None:
    whole = await router.Complete(
        router_pb2.CompleteRequest(model="gpt", messages=PROMPT), metadata=AUTH
    )
    assert not oa_fake.behaviour.requests[-1].get("stream")
    streamed = await collect(
        router.Generate(router_pb2.GenerateRequest(model="gpt", messages=PROMPT), metadata=AUTH)
    )
    assert oa_fake.behaviour.requests[-1]["stream"] is True

    assert whole.provider == "oa"
    assert whole.text == "".join(e.data.text for e in streamed if e.HasField("data"))
    assert whole.usage == streamed[-1].complete.usage
    assert (whole.usage.output_tokens, whole.usage.estimated) == (4, False)
    assert whole.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_openai_http_without_stream_is_one_upstream_body(
    stack: ServiceStack, oa_fake: OpenAIFake
) -> None:
    host = await start_router(stack, oa_fake)
    url = f"http://127.0.0.1:{host.http_port}/v1/chat/completions"
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hello there"}]}
    headers = {"Authorization": "Bearer sk-test-key"}
    async with httpx.AsyncClient(timeout=10) as http:
        plain = await http.post(url, json=body, headers=headers)
        plain_request = oa_fake.behaviour.requests[-1]
        streamed = await http.post(url, json={**body, "stream": True}, headers=headers)
        streamed_request = oa_fake.behaviour.requests[-1]

    assert plain.status_code == 200 and streamed.status_code == 200
    reply = plain.json()
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == 4
    chunks = [
        json.loads(line[len("data: ") :])
        for line in streamed.text.splitlines()
        if line.startswith("data: {")
    ]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert reply["choices"][0]["message"]["content"] == text
    assert not plain_request.get("stream") and streamed_request["stream"] is True


async def test_whole_answers_can_be_turned_off(stack: ServiceStack, oa_fake: OpenAIFake) -> None:
    host = await start_router(stack, oa_fake, whole_answers=False)
    stub = router_pb2_grpc.RouterServiceStub(stack.channel(host))

    reply = await stub.Complete(
        router_pb2.CompleteRequest(model="gpt", messages=PROMPT), metadata=AUTH
    )

    assert reply.provider == "oa" and reply.usage.output_tokens == 4
    assert oa_fake.behaviour.requests[-1]["stream"] is True


async def test_a_whole_answer_has_its_own_timeout_and_then_falls_back(
    stack: ServiceStack, oa_fake: OpenAIFake
) -> None:
    # The first-token timeout (200 ms) would give up on a 500 ms body; the whole-answer
    # timeout waits for it, and falls back to the next back end when it runs out.
    def breaker(whole_answer_timeout: int) -> dict[str, Any]:
        return {
            "retry": {"max_attempts": 1},
            "backends": {
                "oa": {"breaker": {"timeout": 200, "whole_answer_timeout": whole_answer_timeout}}
            },
        }

    oa_fake.behaviour.head_delay_ms = 500
    patient = await start_router(stack, oa_fake, resilience=breaker(5_000))
    hasty = await start_router(stack, oa_fake, resilience=breaker(100))
    request = router_pb2.CompleteRequest(model="gpt", messages=PROMPT)

    served = await router_pb2_grpc.RouterServiceStub(stack.channel(patient)).Complete(
        request, metadata=AUTH
    )
    fell_back = await router_pb2_grpc.RouterServiceStub(stack.channel(hasty)).Complete(
        request, metadata=AUTH
    )

    assert (served.provider, served.fallback_step) == ("oa", common_pb2.FALLBACK_STEP_PRIMARY)
    assert fell_back.provider == "simulated"
    assert fell_back.fallback_step == common_pb2.FALLBACK_STEP_SECONDARY
