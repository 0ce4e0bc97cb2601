"""What one router->provider stream costs in gRPC alone: a Stream call each, or a frame
on one open Multiplex call (router/provider_streams.py); and what one token costs on
that hop when tokens come 10 ms apart, as in peer-bench's st10.

A server process runs a ProviderService whose Stream and Multiplex answer at once with
one event and the end (no back end, no pipeline), pinned with this client to one core.
The client runs N streams one after another each way and prints wall time and CPU per
stream on both sides (the server's from /proc/<pid>/stat).

Paced: a Multiplex stream whose request asks for more than one token gets them 10 ms
apart. The hop's CPU per token (both sides) is printed beside the same tokens handed
from one task to another within one process, and beside the same tokens over a plain
asyncio stream (length-prefixed messages, no gRPC), at the same pace: what the hop
costs beyond an in-process hand-off when the processes sleep between tokens, and how
much of that is gRPC's. Bounded: N
streams per scenario plus 20 paced streams of 20 tokens, about twenty seconds in all.

    python loadtest/provider_hop.py [-n 3000] [--cpu 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from sluice.provider.v1 import provider_pb2, provider_pb2_grpc

_EVENT = provider_pb2.StreamEvent(
    delta=provider_pb2.TokenDelta(text="hello", token_count=1),
    ended=provider_pb2.StreamEnd(),
)


_TOKEN = provider_pb2.StreamEvent(delta=provider_pb2.TokenDelta(text="hello", token_count=1))
_PACE_S = 0.010
_PACED_STREAMS = 20
_PACED_TOKENS = 20


class _Answering(provider_pb2_grpc.ProviderServiceServicer):
    async def Stream(  # noqa: N802 - gRPC method name
        self, request: provider_pb2.StreamRequest, context: Any
    ) -> AsyncIterator[provider_pb2.StreamEvent]:
        yield _EVENT

    async def Multiplex(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[provider_pb2.MultiplexRequest], context: Any
    ) -> None:
        ok = provider_pb2.MultiplexEvent().status  # code 0
        async for message in request_iterator:
            events = []
            for frame in message.frames:
                tokens = frame.start.request.max_tokens
                if tokens > 1:  # paced: one message per token, _PACE_S apart
                    for _ in range(tokens):
                        await asyncio.sleep(_PACE_S)
                        event = provider_pb2.MultiplexEvent(stream_id=frame.stream_id, event=_TOKEN)
                        await context.write(provider_pb2.MultiplexResponse(events=[event]))
                    events.append(provider_pb2.MultiplexEvent(stream_id=frame.stream_id, status=ok))
                elif frame.HasField("start"):
                    events.append(
                        provider_pb2.MultiplexEvent(stream_id=frame.stream_id, event=_EVENT)
                    )
                    events.append(provider_pb2.MultiplexEvent(stream_id=frame.stream_id, status=ok))
            await context.write(provider_pb2.MultiplexResponse(events=events))


async def _plain_tokens(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The paced tokens over a plain asyncio stream (4-byte length, then the message):
    what a non-gRPC token lane would cost, for comparison only."""
    while header := await reader.read(4):
        await reader.readexactly(int.from_bytes(header, "big"))
        token = provider_pb2.MultiplexEvent(stream_id=1, event=_TOKEN).SerializeToString()
        for _ in range(_PACED_TOKENS):
            await asyncio.sleep(_PACE_S)
            writer.write(len(token).to_bytes(4, "big") + token)
        writer.write(b"\0\0\0\0")
    writer.close()


async def _serve(port: int, plain_port: int) -> None:
    server = grpc.aio.server()
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(_Answering(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    plain = await asyncio.start_server(_plain_tokens, "127.0.0.1", plain_port)
    async with plain:
        await server.wait_for_termination()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Meter:
    """Wall time and CPU (this process's, and the server's when given) since it was made."""

    def __init__(self, server_pid: int | None) -> None:
        self._server_pid = server_pid
        self._client, self._server = _own_cpu(), self._server_cpu()
        self._wall = time.perf_counter()

    def _server_cpu(self) -> float:
        return 0.0 if self._server_pid is None else _process_cpu(self._server_pid)

    def per(self, count: int) -> dict[str, float]:
        """Milliseconds per item of `count`."""
        return {
            "wall_ms": (time.perf_counter() - self._wall) / count * 1000,
            "client_cpu_ms": (_own_cpu() - self._client) / count * 1000,
            "server_cpu_ms": (self._server_cpu() - self._server) / count * 1000,
        }


async def _measure(
    port: int, plain_port: int, server_pid: int, count: int
) -> dict[str, dict[str, float]]:
    request = provider_pb2.StreamRequest(backend="b", max_tokens=1)
    figures: dict[str, dict[str, float]] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = provider_pb2_grpc.ProviderServiceStub(channel)

        async def stream_call() -> None:
            async for _ in stub.Stream(request, timeout=30):
                pass

        session = stub.Multiplex()
        start = provider_pb2.MultiplexStart(request=request, window_bytes=65536)

        async def multiplexed(stream_id: int) -> None:
            frame = provider_pb2.MultiplexFrame(stream_id=stream_id, start=start)
            await session.write(provider_pb2.MultiplexRequest(frames=[frame]))
            await session.read()

        for name, one in (("Stream call per stream", None), ("frame on one Multiplex call", 1)):
            for i in range(300):  # warm-up
                await (stream_call() if one is None else multiplexed(i))
            meter = _Meter(server_pid)
            for i in range(count):
                await (stream_call() if one is None else multiplexed(1000 + i))
            figures[name] = meter.per(count)
        figures.update(await _paced(session, server_pid))
        session.cancel()
    figures["paced token, plain asyncio stream"] = await _paced_plain(plain_port, server_pid)
    return figures


async def _paced_plain(port: int, server_pid: int) -> dict[str, float]:
    """The paced tokens over a plain asyncio stream instead of gRPC (one loop wake-up per
    side per token, no completion-queue poller)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ask = provider_pb2.StreamRequest(backend="b", max_tokens=_PACED_TOKENS).SerializeToString()
    tokens = _PACED_STREAMS * _PACED_TOKENS
    meter = _Meter(server_pid)
    for _ in range(_PACED_STREAMS):
        writer.write(len(ask).to_bytes(4, "big") + ask)
        while size := int.from_bytes(await reader.readexactly(4), "big"):
            provider_pb2.MultiplexEvent.FromString(await reader.readexactly(size))
    figures = meter.per(tokens)
    writer.close()
    await writer.wait_closed()
    return figures


async def _paced(
    session: grpc.aio.StreamStreamCall[Any, Any], server_pid: int
) -> dict[str, dict[str, float]]:
    """CPU per token with tokens _PACE_S apart: over the hop, and handed over in-process."""
    start = provider_pb2.MultiplexStart(
        request=provider_pb2.StreamRequest(backend="b", max_tokens=_PACED_TOKENS),
        window_bytes=65536,
    )
    tokens = _PACED_STREAMS * _PACED_TOKENS
    meter = _Meter(server_pid)
    for i in range(_PACED_STREAMS):
        frame = provider_pb2.MultiplexFrame(stream_id=100_000 + i, start=start)
        await session.write(provider_pb2.MultiplexRequest(frames=[frame]))
        ended = False
        while not ended:
            response = await session.read()
            ended = any(e.HasField("status") for e in response.events)
    hop = meter.per(tokens)

    # The same tokens at the same pace, handed from a producer task to a consumer.
    queue: asyncio.Queue[provider_pb2.StreamEvent | None] = asyncio.Queue()

    async def produce() -> None:
        for _ in range(tokens):
            await asyncio.sleep(_PACE_S)
            queue.put_nowait(provider_pb2.StreamEvent.FromString(_TOKEN.SerializeToString()))
        queue.put_nowait(None)

    meter = _Meter(None)
    producer = asyncio.ensure_future(produce())
    while await queue.get() is not None:
        pass
    await producer
    local = meter.per(tokens)
    return {"paced token, over the hop": hop, "paced token, in one process": local}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="streams per scenario")
    parser.add_argument("--cpu", type=int, default=0, help="the one core both sides run on")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--plain-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.serve:
        uvloop.run(_serve(args.serve, args.plain_port))
        return
    os.sched_setaffinity(0, {args.cpu})
    port, plain_port = _free_port(), _free_port()
    server = subprocess.Popen(  # noqa: S603 - this script, by path
        [sys.executable, __file__, "--serve", str(port), "--plain-port", str(plain_port)]
    )
    try:
        os.sched_setaffinity(server.pid, {args.cpu})
        time.sleep(1.5)
        figures = uvloop.run(_measure(port, plain_port, server.pid, args.n))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"{args.n} streams each way, client and server on CPU {args.cpu}")
    print(f"paced rows: per token, {_PACED_STREAMS} streams of {_PACED_TOKENS} tokens")
    print(f"{'':34s} {'wall/stream':>12s} {'client CPU':>11s} {'server CPU':>11s} {'both':>8s}")
    for name, row in figures.items():
        both = row["client_cpu_ms"] + row["server_cpu_ms"]
        print(
            f"{name:34s} {row['wall_ms']:9.3f} ms {row['client_cpu_ms']:8.3f} ms "
            f"{row['server_cpu_ms']:8.3f} ms {both:5.3f} ms"
        )


if __name__ == "__main__":
    main()
