"""ProviderService.Multiplex over a real channel, and the router's streams on it.

A multiplexed stream must be indistinguishable from a Stream call: the same events,
the same rich error status, cancellation that stops the back end, deadlines, and
backpressure (per-stream credit instead of the call's HTTP/2 window).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from sluice.common.v1 import common_pb2
from sluice.core.errors import from_rpc_status
from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.service import build_server as build_limiter
from sluice.provider.service import build_server as build_provider
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.wiring import build_server as build_router
from tests.support import (
    AUTH,
    SLOW_BACKEND,
    ServiceStack,
    collect,
    error_info,
    eventually,
    limiter_settings,
    metric,
    provider_settings,
    router_settings,
)

STREAM = "/sluice.provider.v1.ProviderService/Stream"
MULTIPLEX = "/sluice.provider.v1.ProviderService/Multiplex"
PROMPT = "Explain how a sluice gate keeps a canal level."


def stream_request(backend: str = "simulated", **fields: object) -> provider_pb2.StreamRequest:
    return provider_pb2.StreamRequest(
        request_id="r-1",
        backend=backend,
        messages=[common_pb2.Message(role="user", content=PROMPT)],
        **fields,  # type: ignore[arg-type]
    )


def start(
    stream_id: int,
    request: provider_pb2.StreamRequest,
    *,
    timeout_s: float = 10.0,
    window_bytes: int = 65536,
    metadata: dict[str, str] | None = None,
) -> provider_pb2.MultiplexFrame:
    timeout = duration_pb2.Duration()
    timeout.FromMilliseconds(int(timeout_s * 1000))
    return provider_pb2.MultiplexFrame(
        stream_id=stream_id,
        start=provider_pb2.MultiplexStart(
            request=request,
            timeout=timeout,
            window_bytes=window_bytes,
            metadata=[
                provider_pb2.MultiplexMetadata(key=k, value=v) for k, v in (metadata or {}).items()
            ],
        ),
    )


def text_of(events: list[provider_pb2.StreamEvent]) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


def frames(*items: provider_pb2.MultiplexFrame) -> provider_pb2.MultiplexRequest:
    return provider_pb2.MultiplexRequest(frames=items)


class Streams:
    """Reads a Multiplex call, sorting its events by stream id."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.events: dict[int, list[provider_pb2.StreamEvent]] = defaultdict(list)
        self.status: dict[int, status_pb2.Status] = {}

    async def until_ended(self, *ids: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not all(i in self.status for i in ids):
                await self.read_one()

    async def read_one(self) -> None:
        message = await self.call.read()
        assert message is not grpc.aio.EOF
        for event in message.events:
            assert event.stream_id not in self.status, "nothing may follow a stream's status"
            if event.HasField("event"):
                self.events[event.stream_id].append(event.event)
            else:
                self.status[event.stream_id] = event.status


async def multiplex_call(
    stack: ServiceStack, backend: dict[str, object] | None = None
) -> tuple[ServiceHost, Streams]:
    """A provider with `backend` (the fast simulated one by default) and a Multiplex call."""
    host = await stack.start(build_provider(provider_settings(backend)))
    stub = provider_pb2_grpc.ProviderServiceStub(stack.channel(host))
    return host, Streams(stub.Multiplex())


@pytest.fixture
def provider(
    stack: ServiceStack, provider_host: ServiceHost
) -> provider_pb2_grpc.ProviderServiceStub:
    return provider_pb2_grpc.ProviderServiceStub(stack.channel(provider_host))


async def test_streams_on_one_call_equal_their_own_calls_and_end_with_their_status(
    provider: provider_pb2_grpc.ProviderServiceStub, provider_host: ServiceHost
) -> None:
    alone = await collect(provider.Stream(stream_request(max_tokens=30)))
    call = provider.Multiplex()
    streams = Streams(call)
    await call.write(
        frames(
            start(1, stream_request(max_tokens=30)),
            start(2, stream_request(max_tokens=4)),
            start(3, stream_request(backend="gpt-imaginary")),
        )
    )
    await streams.until_ended(1, 2, 3)

    # Ticks may group tokens differently; the answer, its start and its end are equal.
    mine = streams.events[1]
    assert (mine[0], mine[-1]) == (alone[0], alone[-1])
    assert text_of(mine) == text_of(alone) != ""
    assert streams.status[1].code == grpc.StatusCode.OK.value[0]
    assert streams.events[2][-1].end.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert streams.events[2][-1].end.usage.output_tokens == 4
    # The unknown back end: the rich status its Stream call ends with, ErrorInfo and all.
    assert streams.events[3] == []
    failed = streams.status[3]
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    error = from_rpc_status(failed)
    assert (error.reason, error.metadata["backend"]) == ("VALIDATION_ERROR", "gpt-imaginary")
    port = provider_host.metrics_port
    assert await metric(port, "sluice_provider_streams_total", outcome="completed") == 3
    # Each multiplexed stream counts as a Stream call; the carrying call is not traced.
    assert await metric(port, "sluice_rpc_requests_total", method=STREAM, code="OK") == 3
    assert await metric(port, "sluice_errors_total", method=STREAM) == 1

    # Closing the caller's side ends the call once its streams have ended.
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_cancel_frame_stops_the_back_end_and_other_streams_go_on(
    stack: ServiceStack,
) -> None:
    host, streams = await multiplex_call(stack, SLOW_BACKEND)
    call = streams.call
    await call.write(
        frames(start(1, stream_request(max_tokens=2000)), start(2, stream_request(max_tokens=3)))
    )
    while len([e for e in streams.events[1] if e.HasField("delta")]) < 2:
        await streams.read_one()
    await call.write(
        frames(provider_pb2.MultiplexFrame(stream_id=1, cancel=provider_pb2.MultiplexCancel()))
    )
    await streams.until_ended(2)

    port = host.metrics_port

    async def cancelled() -> float:
        return await metric(port, "sluice_provider_streams_total", outcome="cancelled")

    assert await eventually(cancelled, lambda n: n == 1) == 1
    assert streams.status[2].code == grpc.StatusCode.OK.value[0]
    assert 1 not in streams.status  # the caller cancelled it: no status comes back
    call.cancel()


async def test_deadline_ends_a_stream_with_deadline_exceeded(stack: ServiceStack) -> None:
    _, streams = await multiplex_call(stack, SLOW_BACKEND)
    call = streams.call
    await call.write(frames(start(7, stream_request(max_tokens=2000), timeout_s=0.3)))
    await streams.until_ended(7, timeout_s=5)

    assert streams.status[7].code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert any(e.HasField("delta") for e in streams.events[7])
    call.cancel()


async def test_a_stream_without_credit_stops_and_resumes_when_credit_comes(
    stack: ServiceStack,
) -> None:
    fast_and_long: dict[str, object] = {
        "time_to_first_token_ms": 1,
        "tokens_per_second": 5_000,
        "min_tick_ms": 1,
        "answer_tokens": 2_000,
    }
    _, streams = await multiplex_call(stack, fast_and_long)
    call = streams.call
    await call.write(frames(start(1, stream_request(max_tokens=2000), window_bytes=1024)))

    def received() -> int:
        return sum(e.ByteSize() for e in streams.events[1])

    # (A read is never cancelled here: cancelling a grpc.aio read cancels the call.)
    reader = asyncio.ensure_future(streams.until_ended(1))
    await asyncio.sleep(0.3)
    held = received()
    await asyncio.sleep(0.2)
    assert received() == held  # the window is spent: nothing more comes
    assert 0 < held <= 1024 + 512  # one window, plus the one message that crossed it
    assert 1 not in streams.status

    # Credit for everything received lets the rest through.
    credit = provider_pb2.MultiplexCredit(bytes=10**9)
    await call.write(frames(provider_pb2.MultiplexFrame(stream_id=1, credit=credit)))
    await reader
    assert streams.status[1].code == grpc.StatusCode.OK.value[0]
    assert streams.events[1][-1].end.usage.output_tokens > 100
    call.cancel()


async def test_the_caller_leaving_cancels_every_stream_on_the_call(stack: ServiceStack) -> None:
    host, streams = await multiplex_call(stack, SLOW_BACKEND)
    call = streams.call
    await call.write(
        frames(start(1, stream_request(max_tokens=2000)), start(2, stream_request(max_tokens=2000)))
    )
    while not (streams.events[1] and streams.events[2]):
        await streams.read_one()
    call.cancel()

    async def cancelled() -> float:
        return await metric(host.metrics_port, "sluice_provider_streams_total", outcome="cancelled")

    assert await eventually(cancelled, lambda n: n == 2) == 2


# -- the router's streams on it -------------------------------------------------------


async def router_on(
    stack: ServiceStack, provider: ServiceHost, *, multiplex: bool, **fields: object
) -> Any:
    limiter = await stack.start(build_limiter(limiter_settings()))
    multiplexing = {"enabled": multiplex, **fields.pop("provider_multiplex", {})}  # type: ignore[dict-item]
    settings = router_settings(limiter, provider, provider_multiplex=multiplexing, **fields)
    router = await stack.start(build_router(settings))
    return router, router_pb2_grpc.RouterServiceStub(stack.channel(router))


def generate_request(prompt: str = PROMPT, max_tokens: int = 40) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content=prompt)],
        max_tokens=max_tokens,
    )


@pytest.mark.parametrize("multiplex", [True, False], ids=["multiplexed", "stream-calls"])
async def test_router_relays_the_same_answer_either_way(
    stack: ServiceStack, provider_host: ServiceHost, multiplex: bool
) -> None:
    _, stub = await router_on(stack, provider_host, multiplex=multiplex)
    events = await collect(stub.Generate(generate_request(), metadata=AUTH))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "metadata" and kinds[-1] == "complete"
    text = "".join(e.data.text for e in events if e.HasField("data"))
    direct = await collect(
        provider_pb2_grpc.ProviderServiceStub(stack.channel(provider_host)).Stream(
            stream_request(max_tokens=40)
        )
    )
    assert text == text_of(direct) != ""
    port = provider_host.metrics_port
    # The router's stream and the direct call, both counted as Stream calls; the carrying
    # call (if any) is still open.
    assert await metric(port, "sluice_rpc_requests_total", method=STREAM, code="OK") == 2
    assert await metric(port, "sluice_rpc_requests_total", method=MULTIPLEX) == 0


async def test_router_maps_a_multiplexed_error_like_a_stream_calls(
    stack: ServiceStack,
) -> None:
    provider = await stack.start(build_provider(provider_settings(fault_injection=True)))
    _, stub = await router_on(stack, provider, multiplex=True)
    metadata = (*AUTH, ("x-sluice-fault", "context_length_error=1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.Generate(generate_request(), metadata=metadata))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "TOKEN_LIMIT_EXCEEDED"


async def test_a_broken_call_fails_its_streams_and_the_next_request_reconnects(
    stack: ServiceStack,
) -> None:
    provider = await stack.start(build_provider(provider_settings(SLOW_BACKEND)))
    port = provider.port
    # The breaker stays closed through the failures while the provider is away.
    lenient = {"breaker": {"failure_threshold": 1000}}
    _, stub = await router_on(stack, provider, multiplex=True, resilience=lenient)
    call = stub.Generate(generate_request(max_tokens=2000), metadata=AUTH)
    assert (await call.read()).HasField("metadata")
    await stack.stop(provider)  # the multiplexed call breaks under the stream
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with asyncio.timeout(10):
            while await call.read() is not grpc.aio.EOF:
                pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "NETWORK_FAILURE"

    # A provider back on the same address: the router's next request opens a new call.
    revived = provider_settings(server={"host": "127.0.0.1", "port": port, "metrics_port": 0})
    await stack.start(build_provider(revived))
    async with asyncio.timeout(10):
        while True:
            try:
                events = await collect(stub.Generate(generate_request(), metadata=AUTH))
                break
            except grpc.aio.AioRpcError as err:  # until the channel reconnects
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.05)
    assert events[-1].HasField("complete")


async def test_streams_spread_over_every_provider_replica(stack: ServiceStack) -> None:
    replicas = [await stack.start(build_provider(provider_settings())) for _ in range(2)]
    limiter = await stack.start(build_limiter(limiter_settings()))
    target = "ipv4:" + ",".join(f"127.0.0.1:{host.port}" for host in replicas)
    router = await stack.start(build_router(router_settings(limiter, target)))
    stub = router_pb2_grpc.RouterServiceStub(stack.channel(router))
    for i in range(20):
        events = await collect(stub.Generate(generate_request(f"spread {i}"), metadata=AUTH))
        assert events[-1].HasField("complete")
    served = [
        await metric(host.metrics_port, "sluice_provider_streams_total", outcome="completed")
        for host in replicas
    ]
    assert sum(served) == 20
    assert min(served) >= 5, served


async def test_an_old_call_takes_no_new_streams_and_closes_cleanly_after_its_last(
    stack: ServiceStack, provider_host: ServiceHost
) -> None:
    _, stub = await router_on(
        stack, provider_host, multiplex=True, provider_multiplex={"max_age_s": 0.05}
    )
    for i in range(3):
        events = await collect(stub.Generate(generate_request(f"rotate {i}"), metadata=AUTH))
        assert events[-1].HasField("complete")
        await asyncio.sleep(0.1)  # older than max_age_s: the next stream opens a new call

    async def closed_ok() -> float:
        port = provider_host.metrics_port
        return await metric(port, "sluice_rpc_requests_total", method=MULTIPLEX, code="OK")

    assert await eventually(closed_ok, lambda n: n == 2) == 2


class StreamOnlyProvider(provider_pb2_grpc.ProviderServiceServicer):
    """A provider from before Multiplex: Stream only (Multiplex is UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.calls = 0

    async def Stream(  # noqa: N802 - gRPC method name
        self, request: provider_pb2.StreamRequest, context: Any
    ) -> Any:
        self.calls += 1
        yield provider_pb2.StreamEvent(start=provider_pb2.StreamStart(backend=request.backend))
        yield provider_pb2.StreamEvent(delta=provider_pb2.TokenDelta(text="old", token_count=1))
        usage = common_pb2.Usage(input_tokens=1, output_tokens=1, total_tokens=2)
        yield provider_pb2.StreamEvent(
            end=provider_pb2.StreamEnd(finish_reason=common_pb2.FINISH_REASON_STOP, usage=usage)
        )


async def test_a_provider_without_multiplex_gets_stream_calls(stack: ServiceStack) -> None:
    old = StreamOnlyProvider()
    port = await stack.serve(provider_pb2_grpc.add_ProviderServiceServicer_to_server, old)
    limiter = await stack.start(build_limiter(limiter_settings()))
    router = await stack.start(build_router(router_settings(limiter, f"127.0.0.1:{port}")))
    stub = router_pb2_grpc.RouterServiceStub(stack.channel(router))
    texts: list[str] = []
    for _ in range(3):
        try:
            events = await collect(stub.Generate(generate_request(), metadata=AUTH))
        except grpc.aio.AioRpcError as err:
            # Only the stream that found Multiplex missing may fail (the chain may
            # also retry it); every later one goes as a Stream call.
            assert not texts, err
            continue
        texts.append("".join(e.data.text for e in events if e.HasField("data")))
    assert texts[-2:] == ["old", "old"]
    assert old.calls >= 2


async def test_a_stopping_provider_finishes_its_streams_then_ends_the_call(
    stack: ServiceStack,
) -> None:
    paced: dict[str, object] = {
        "time_to_first_token_ms": 1,
        "tokens_per_second": 100,
        "min_tick_ms": 10,
    }
    host, streams = await multiplex_call(stack, paced)
    call = streams.call
    await call.write(frames(start(1, stream_request(max_tokens=30))))
    await streams.read_one()  # stream 1 is under way
    stopped_at = asyncio.get_running_loop().time()
    stopping = asyncio.ensure_future(host.stop(10.0))
    await asyncio.sleep(0.05)
    await call.write(frames(start(2, stream_request(max_tokens=30))))
    await streams.until_ended(1, 2)

    assert streams.status[1].code == grpc.StatusCode.OK.value[0]
    assert streams.events[1][-1].end.usage.output_tokens == 30
    # A stream started while the provider stops: UNAVAILABLE, so the router tries
    # another replica (a bare status: NETWORK_FAILURE there).
    assert streams.status[2].code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert not streams.status[2].details
    assert await call.read() is grpc.aio.EOF
    await stopping
    # Ended with its last stream, not at the end of the 10 s grace.
    assert asyncio.get_running_loop().time() - stopped_at < 3.0
