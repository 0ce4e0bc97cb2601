"""A stalled client pauses the provider stream and the router's memory stays bounded
(router/buffer.py), over native gRPC and over the OpenAI-compatible SSE listener.

The provider is a real gRPC `ProviderService` in-process that streams 1 KiB deltas as
fast as flow control lets it and counts what it got out; the router is the real one,
carrying the stream multiplexed (credit) and as a Stream call (HTTP/2 windows).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.core.grpcx.types import ServicerContext
from sluice.limiter.service import build_server as build_limiter
from sluice.provider.multiplex import Multiplexer
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from sluice.router.v1 import router_pb2
from sluice.router.wiring import build_server as build_router
from tests.support import (
    API_KEY,
    AUTH,
    ServiceStack,
    limiter_settings,
    router_settings,
)

DELTA = "x" * 1023 + " "
DELTAS = 4000  # 4 MB in all: far more than every buffer on the way together
# Bytes that may sit between the provider and a stalled client: the provider's and the
# router's gRPC send buffers and flow-control windows, the router's own buffer (at most
# 0.8 x 64 KiB held plus one batch being written) and the client's receive buffers.
IN_FLIGHT_BOUND = 2 * 1024 * 1024
# Python heap the router may gain while the stall lasts (nothing flows, nothing grows).
HEAP_GROWTH_BOUND = 256 * 1024


class CountingProvider(provider_pb2_grpc.ProviderServiceServicer):
    """Streams DELTAS deltas as fast as it may; `produced` counts those sent."""

    def __init__(self) -> None:
        self.produced = 0
        self.finished = asyncio.Event()
        self.multiplexed = 0  # streams that came as frames on a Multiplex call
        self._multiplexer = Multiplexer(self._multiplexed_stream)

    async def _multiplexed_stream(self, request: provider_pb2.StreamRequest, context: Any) -> None:
        self.multiplexed += 1
        async for event in self.Stream(request, context):
            await context.write(event)  # waits while the stream has no credit left

    async def Multiplex(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[provider_pb2.MultiplexRequest],
        context: ServicerContext,
    ) -> None:
        await self._multiplexer.serve(request_iterator, context)

    async def Stream(  # noqa: N802 - gRPC method name
        self, request: provider_pb2.StreamRequest, context: ServicerContext
    ) -> AsyncIterator[provider_pb2.StreamEvent]:
        yield provider_pb2.StreamEvent(
            start=provider_pb2.StreamStart(backend=request.backend, model="counting")
        )
        for _ in range(DELTAS):
            yield provider_pb2.StreamEvent(delta=provider_pb2.TokenDelta(text=DELTA, token_count=1))
            self.produced += 1
        yield provider_pb2.StreamEvent(
            end=provider_pb2.StreamEnd(
                finish_reason=common_pb2.FINISH_REASON_STOP,
                usage=common_pb2.Usage(input_tokens=1, output_tokens=DELTAS, total_tokens=DELTAS),
            )
        )
        self.finished.set()


@dataclass
class Rig:
    provider: CountingProvider
    router_port: int
    http_port: int
    multiplexed: bool

    def check_transport(self) -> None:
        """The stream went the way the router was set up for."""
        assert self.provider.multiplexed == (1 if self.multiplexed else 0)


# Both ways the router carries provider streams: frames on a Multiplex call (per-stream
# credit pauses the provider) and a Stream call each (HTTP/2 flow control pauses it).
@pytest.fixture(params=[True, False], ids=["multiplexed", "stream-calls"])
async def rig(stack: ServiceStack, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    multiplexed: bool = request.param
    provider = CountingProvider()
    port = await stack.serve(provider_pb2_grpc.add_ProviderServiceServicer_to_server, provider)
    limiter = await stack.start(build_limiter(limiter_settings()))
    router = await stack.start(
        build_router(
            router_settings(
                limiter,
                f"127.0.0.1:{port}",
                models={"default": {"backends": [{"backend": "counting"}]}},
                progress_interval_ms=1000,
                provider_multiplex={"enabled": multiplexed},
            )
        )
    )
    yield Rig(provider, router.port, router.http_port, multiplexed)


async def stalled(provider: CountingProvider) -> int:
    """Wait until the provider's count stops growing for 300 ms; return it."""
    deadline = time.monotonic() + 20
    last, since = provider.produced, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if provider.produced != last:
            last, since = provider.produced, time.monotonic()
        elif time.monotonic() - since >= 0.3:
            return last
    raise AssertionError(f"the provider never paused (produced {provider.produced})")


async def check_stall(provider: CountingProvider, received_bytes: Callable[[], int]) -> None:
    """The provider pauses well before the end, and the router's heap stops growing."""
    produced = await stalled(provider)
    assert produced < DELTAS, "the whole answer was produced: nothing paused the provider"
    in_flight = produced * len(DELTA) - received_bytes()
    assert in_flight <= IN_FLIGHT_BOUND, in_flight
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await asyncio.sleep(0.5)  # a stall: nothing may move or grow meanwhile
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert provider.produced == produced
    assert grown <= HEAP_GROWTH_BOUND, grown


async def test_a_stalled_grpc_client_pauses_the_provider(rig: Rig) -> None:
    # No BDP probing on the client: its receive window stays at the default 64 KiB.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 1 << 22)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rig.router_port}", options=options) as ch:
        call = ch.unary_stream(
            "/sluice.router.v1.RouterService/Generate",
            request_serializer=router_pb2.GenerateRequest.SerializeToString,
            response_deserializer=router_pb2.GenerateEvent.FromString,
        )(
            router_pb2.GenerateRequest(
                model="default", messages=[{"role": "user", "content": "hi"}]
            ),
            metadata=AUTH,
        )
        events: list[router_pb2.GenerateEvent] = []
        text = 0
        while text < 16 * len(DELTA):  # read a little, then stop reading
            event = await call.read()
            events.append(event)
            text += len(event.data.text)
        await check_stall(rig.provider, lambda: text)
        # The client comes back: the rest arrives, in order, nothing lost or repeated.
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)
            text += len(event.data.text)
    assert rig.provider.finished.is_set()
    rig.check_transport()
    assert text == DELTAS * len(DELTA)
    assert [e.sequence for e in events] == list(range(len(events)))
    assert events[-1].WhichOneof("event") == "complete"
    # Coalesced on the way: fewer data events than deltas, none over max_buffer_size.
    data = [e.data for e in events if e.WhichOneof("event") == "data"]
    assert len(data) < DELTAS
    assert max(len(d.text) for d in data) <= 65_536
    assert sum(d.token_count for d in data) == DELTAS


async def read_http_head(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    return head


async def test_a_stalled_sse_client_pauses_the_provider(rig: Rig) -> None:
    body = json.dumps(
        {"model": "default", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    # Small client buffers (socket and stream reader): once full, the client reads no more.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", rig.http_port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\n"
            b"content-type: application/json\r\n"
            + f"authorization: Bearer {API_KEY}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await read_http_head(reader)
        received = bytearray(await reader.read(16 * 1024))
        # From here on the client reads nothing: the socket's buffers fill up.
        await check_stall(rig.provider, lambda: len(received) + len(reader._buffer))  # type: ignore[attr-defined]
        received += await asyncio.wait_for(_read_to_done(reader), 30)
    finally:
        writer.close()
    assert rig.provider.finished.is_set()
    rig.check_transport()
    text = "".join(_sse_texts(bytes(received)))
    assert len(text) == DELTAS * len(DELTA)
    assert b"data: [DONE]" in received[-64:]


async def _read_to_done(reader: asyncio.StreamReader) -> bytes:
    """The rest of the chunked body, up to its last (empty) chunk."""
    out = bytearray()
    while not out.endswith(b"\r\n0\r\n\r\n"):
        chunk = await reader.read(65536)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _sse_texts(raw: bytes) -> list[str]:
    """Delta texts of a chunked SSE body (chunk framing lines are not `data:` lines)."""
    texts = []
    for raw_line in raw.split(b"\n"):
        line = raw_line.rstrip(b"\r")
        if line.startswith(b"data: {"):
            choices = json.loads(line[6:])["choices"]
            if choices:
                texts.append(choices[0]["delta"].get("content") or "")
    return texts
