"""A request the client got wrong never counts against a back end (issue 16 item 4).

`tools[].parameters_json` that is not a JSON object made the provider fail INTERNAL, which
the router's fallback chain counts as a back-end failure: three such requests opened the
shared breaker for every tenant. Here, through the real router, provider and an OpenAI
fake: the router refuses them with a typed 400 before any back end is called, the
provider does too when called directly, and a back end's own 400 maps to INVALID_INPUT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from sluice.router.v1 import router_pb2, router_pb2_grpc
from tests.fakes.common import FakeBehaviour
from tests.fakes.openai_fake import OpenAIFake
from tests.integration.test_provider_http import KEY, http_backend, start_rig
from tests.integration.test_router_upstream import start_router
from tests.support import AUTH, ServiceStack, collect, error_info, metric

BAD_SCHEMAS = ["not json", "[1, 2]", "[" * 20_000 + "]" * 20_000, '{"a": NaN}', '"x"']
PROMPT = [common_pb2.Message(role="user", content="hello there")]


@pytest.fixture
async def oa_fake() -> AsyncIterator[OpenAIFake]:
    fake = OpenAIFake(FakeBehaviour(api_key=KEY, answer_tokens=4))
    async with fake:
        yield fake


async def test_bad_tool_schemas_are_400s_and_leave_the_breaker_closed(
    stack: ServiceStack, oa_fake: OpenAIFake
) -> None:
    host = await start_router(
        stack, oa_fake, resilience={"backends": {"oa": {"breaker": {"failure_threshold": 2}}}}
    )
    router = router_pb2_grpc.RouterServiceStub(stack.channel(host))
    for schema in BAD_SCHEMAS * 2:
        bad = router_pb2.GenerateRequest(
            model="gpt",
            messages=PROMPT,
            tools=[common_pb2.Tool(name="lookup", parameters_json=schema)],
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(router.Generate(bad, metadata=AUTH))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, schema[:20]
        assert error_info(caught.value).reason == "VALIDATION_ERROR"
    assert oa_fake.behaviour.requests == []  # no back end was asked

    events = await collect(
        router.Generate(router_pb2.GenerateRequest(model="gpt", messages=PROMPT), metadata=AUTH)
    )
    assert events[0].metadata.provider == "oa"
    assert events[0].metadata.fallback_step == common_pb2.FALLBACK_STEP_PRIMARY
    assert await metric(host.metrics_port, "sluice_router_breaker_state", backend="oa") == 0


@pytest.mark.parametrize("schema", BAD_SCHEMAS)
async def test_the_provider_called_directly_types_a_bad_schema_too(
    stack: ServiceStack, oa_fake: OpenAIFake, schema: str
) -> None:
    rig = await start_rig(stack, {"oa": oa_fake}, {"oa": http_backend("openai", oa_fake)})
    stub = provider_pb2_grpc.ProviderServiceStub(stack.channel(rig.host))
    request = provider_pb2.StreamRequest(
        request_id="r-1",
        backend="oa",
        messages=PROMPT,
        tools=[common_pb2.Tool(name="lookup", parameters_json=schema)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.Stream(request))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.reason == "VALIDATION_ERROR"
    assert oa_fake.behaviour.requests == []
    (span,) = rig.client_spans()
    assert (span.attributes or {})["error.type"] == "VALIDATION_ERROR"
