"""Converse figures through Envoy: turns on one WebSocket vs one Converse gRPC stream vs
separate Generate calls, and cancel latency. Starts a private suite on free loopback
ports (loadtest/bench.py's), runs bounded sequential loads, prints the figures.

    python -m loadtest.converse_bench [--turns 300] [--cancels 30]

Turn latency is prompt sent -> final event received (20 tokens from the `instant`
back end, so it is the gateway's own cost per turn). Cancel latency is cancel sent ->
the turn's CANCELLED event received, on a back end that streams 100 tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml

# Run as `python loadtest/converse_bench.py`: the repository root, for `loadtest.bench`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.bench import RunningSuite, suite_config
from sluice.common.v1 import common_pb2
from sluice.router.v1 import router_pb2, router_pb2_grpc

KEY = "sk-sluice-dev"
AUTH = (("authorization", f"Bearer {KEY}"),)
MESSAGES = [{"role": "user", "content": "tell me about canal locks"}]


def figures(name: str, seconds: list[float], wall_s: float | None) -> None:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    rate = f"{len(ordered) / wall_s:8.1f}/s" if wall_s else " " * 10
    print(
        f"{name:<44} n={len(ordered):>4}  {rate}  "
        f"p50 {statistics.median(ordered) * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms"
    )


def ws_prompt(turn_id: str, model: str, max_tokens: int) -> str:
    request = {"model": model, "max_tokens": max_tokens, "messages": MESSAGES}
    return json.dumps({"prompt": {"turn_id": turn_id, "request": request}})


async def ws_final(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"socket closed: {message}")
        event: dict[str, Any] = json.loads(message.data)["event"]
        if "complete" in event or "error" in event:
            return event


async def websocket_turns(edge: str, turns: int) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"http://{edge}/v1/ws", headers=dict(AUTH)) as ws,
    ):
        seconds = []
        started = time.perf_counter()
        for index in range(turns):
            sent = time.perf_counter()
            await ws.send_str(ws_prompt(f"t{index}", "instant", 20))
            assert "complete" in await ws_final(ws)
            seconds.append(time.perf_counter() - sent)
        figures("WebSocket /v1/ws, turns on one socket", seconds, time.perf_counter() - started)


async def websocket_cancels(edge: str, cancels: int) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"http://{edge}/v1/ws", headers=dict(AUTH)) as ws,
    ):
        seconds = []
        for index in range(cancels):
            await ws.send_str(ws_prompt(f"c{index}", "slow", 4000))
            while "data" not in json.loads((await ws.receive()).data)["event"]:
                pass
            sent = time.perf_counter()
            await ws.send_str(json.dumps({"cancel": {"turn_id": f"c{index}"}}))
            final = await ws_final(ws)
            seconds.append(time.perf_counter() - sent)
            assert final["error"]["reason"] == "CANCELLED", final
        figures("WebSocket cancel -> CANCELLED event", seconds, None)


def grpc_prompt(turn_id: str) -> router_pb2.ConverseRequest:
    return router_pb2.ConverseRequest(
        prompt=router_pb2.ConversePrompt(
            turn_id=turn_id,
            request=router_pb2.GenerateRequest(
                model="instant",
                max_tokens=20,
                messages=[common_pb2.Message(role="user", content=MESSAGES[0]["content"])],
            ),
        )
    )


async def grpc_turns(edge: str, turns: int) -> None:
    outbox: asyncio.Queue[router_pb2.ConverseRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[router_pb2.ConverseRequest]:
        while (request := await outbox.get()) is not None:
            yield request

    async with grpc.aio.insecure_channel(edge) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        call = stub.Converse(requests(), metadata=AUTH)
        seconds = []
        started = time.perf_counter()
        for index in range(turns):
            sent = time.perf_counter()
            outbox.put_nowait(grpc_prompt(f"t{index}"))
            while True:
                event = await call.read()
                assert isinstance(event, router_pb2.ConverseEvent)
                if event.event.WhichOneof("event") in ("complete", "error"):
                    break
            seconds.append(time.perf_counter() - sent)
        outbox.put_nowait(None)
        figures("gRPC Converse, turns on one stream", seconds, time.perf_counter() - started)

        seconds = []
        started = time.perf_counter()
        request = grpc_prompt("x").prompt.request
        for _ in range(turns):
            sent = time.perf_counter()
            async for _event in stub.Generate(request, metadata=AUTH):
                pass
            seconds.append(time.perf_counter() - sent)
        figures("gRPC Generate, one call per answer", seconds, time.perf_counter() - started)


async def run(args: argparse.Namespace, edge: str) -> None:
    await websocket_turns(edge, args.turns)
    await grpc_turns(edge, args.turns)
    await websocket_cancels(edge, args.cancels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--cancels", type=int, default=30)
    args = parser.parse_args(argv)
    config = suite_config(tracing_ratio=0.0)
    config["provider"]["backends"]["slow"] = {
        "time_to_first_token_ms": 0,
        "tokens_per_second": 100,
        "answer_tokens": 4000,
    }
    config["router"]["models"]["slow"] = {"backends": [{"backend": "slow"}]}
    with tempfile.TemporaryDirectory(prefix="converse-bench-") as tmp:
        workdir = Path(tmp)
        config_file = workdir / "sluice.yaml"
        config_file.write_text(yaml.safe_dump(config))
        with RunningSuite(config_file, workdir, None) as suite:
            edge = suite.address(config, "envoy")
            print(f"through Envoy at {edge}, sequential, one client, tracing off")
            asyncio.run(run(args, edge))
    return 0


if __name__ == "__main__":
    sys.exit(main())
