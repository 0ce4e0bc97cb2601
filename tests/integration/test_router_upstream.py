"""Router -> provider -> fake OpenAI upstream: tool calls reach the client as events,
and ListModels shows the aliases and back ends a key may use."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from loadtest.fakes.common import FakeBehaviour
from loadtest.fakes.openai_fake import OpenAIFake
from sluice.common.v1 import common_pb2
from sluice.limiter.service import build_server as build_limiter
from sluice.router.service import build_server as build_router
from sluice.router.v1 import router_pb2, router_pb2_grpc
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


@pytest.fixture
async def router(stack: ServiceStack, oa_fake: OpenAIFake) -> router_pb2_grpc.RouterServiceStub:
    limiter = await stack.start(build_limiter(limiter_settings()))
    rig = await start_rig(stack, {"oa": oa_fake}, {"oa": http_backend("openai", oa_fake)})
    host = await stack.start(
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
            )
        )
    )
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
