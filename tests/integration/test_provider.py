"""ProviderService over a real channel."""

from __future__ import annotations

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.core.grpcx.server import ServiceHost
from sluice.core.tokens import count_tokens
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from tests.support import ServiceStack, collect, error_info, metric

PROMPT = "Explain how a sluice gate keeps a canal level."


@pytest.fixture
def provider(
    stack: ServiceStack, provider_host: ServiceHost
) -> provider_pb2_grpc.ProviderServiceStub:
    return provider_pb2_grpc.ProviderServiceStub(stack.channel(provider_host))


def stream_request(backend: str = "simulated", **fields: object) -> provider_pb2.StreamRequest:
    return provider_pb2.StreamRequest(
        request_id="r-1",
        backend=backend,
        messages=[common_pb2.Message(role="user", content=PROMPT)],
        **fields,  # type: ignore[arg-type]
    )


async def test_stream_happy_path(
    provider: provider_pb2_grpc.ProviderServiceStub, provider_host: ServiceHost
) -> None:
    events = await collect(provider.Stream(stream_request(max_tokens=200)))

    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    assert kinds.count("delta") == len(kinds) - 2 >= 1
    assert events[0].start.backend == "simulated"
    assert events[0].start.model == "sluice-sim-1"
    usage = events[-1].end.usage
    text = "".join(e.delta.text for e in events[1:-1])
    assert usage.input_tokens == count_tokens(PROMPT)
    assert (
        usage.output_tokens == count_tokens(text) == sum(e.delta.token_count for e in events[1:-1])
    )
    assert events[-1].end.finish_reason == common_pb2.FINISH_REASON_STOP

    port = provider_host.metrics_port
    assert await metric(port, "sluice_provider_streams_total", outcome="completed") == 1
    assert await metric(port, "sluice_provider_output_tokens_total") == usage.output_tokens


async def test_max_tokens_ends_with_length(provider: provider_pb2_grpc.ProviderServiceStub) -> None:
    events = await collect(provider.Stream(stream_request(max_tokens=4)))

    assert events[-1].end.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert events[-1].end.usage.output_tokens == 4


async def test_unknown_backend_is_invalid_argument_with_error_info(
    provider: provider_pb2_grpc.ProviderServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(provider.Stream(stream_request(backend="gpt-imaginary")))

    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gpt-imaginary" in (err.details() or "")
    info = error_info(err)
    assert info.reason == "VALIDATION_ERROR"
    assert info.domain == "sluice.dev"
    assert info.metadata["backend"] == "gpt-imaginary"


async def test_prompt_over_context_window_is_token_limit_exceeded(
    provider: provider_pb2_grpc.ProviderServiceStub, provider_host: ServiceHost
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(provider.Stream(stream_request(max_tokens=40_000)))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.reason == "TOKEN_LIMIT_EXCEEDED"
    assert info.metadata["context_window"] == "32768"
    port = provider_host.metrics_port
    assert await metric(port, "sluice_provider_streams_total", outcome="failed") == 1
    assert await metric(port, "sluice_provider_streams_total", outcome="completed") == 0


async def test_list_backends(provider: provider_pb2_grpc.ProviderServiceStub) -> None:
    response = await provider.ListBackends(provider_pb2.ListBackendsRequest())

    assert [(b.name, b.kind) for b in response.backends] == [("simulated", "simulated")]
