"""Converse streams (gRPC and WebSocket) are held to the same limits as every other stream
(issue 16 item 6): each turn passes the limiter, and the conversation holds one of its key's
`max_concurrent_streams` slots for its whole life, given back however it ends."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.router.v1 import router_pb2
from tests.integration.test_converse import Client, frame, kinds, prompt, ws_turn, ws_url
from tests.support import (
    API_KEY,
    API_KEY_ID,
    AUTH,
    SLOW_BACKEND,
    ServiceStack,
    error_info,
    metric,
    sha256_hex,
    start_suite,
)

ONE_STREAM: dict[str, object] = {"api_keys": [{"id": API_KEY_ID, "sha256": sha256_hex(API_KEY),
                            "max_concurrent_streams": 1}]}  # fmt: skip


async def open_streams(port: int) -> float:
    return await metric(port, "sluice_router_key_streams_open")


async def test_every_converse_turn_passes_the_limiter(stack: ServiceStack) -> None:
    # Two requests of burst for the key, refilled far too slowly to matter here.
    limiter: dict[str, object] = {"per_key": {"capacity": 2, "refill_per_second": 0.001}}
    suite = await start_suite(stack, limiter=limiter, router={"limiter_lease_requests": 0})
    client = Client(suite.router_stub)
    client.send(prompt("t1"))
    assert kinds(await client.turn("t1"))[-1] == "complete"
    client.send(prompt("t2"))
    assert kinds(await client.turn("t2"))[-1] == "complete"
    client.send(prompt("t3"))
    refused = await client.turn("t3")
    assert kinds(refused) == ["error"]
    assert refused[0].error.reason == "QUOTA_EXCEEDED"
    client.half_close()
    # The WebSocket bridge's turns take from the same bucket: the next turn is refused too.
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), headers={"authorization": f"Bearer {API_KEY}"}) as ws,
    ):
        await ws.send_str(frame(prompt("w1")))
        (event,) = await ws_turn(ws, "w1")
    assert event["error"]["reason"] == "QUOTA_EXCEEDED"


async def test_a_conversation_holds_its_keys_stream_slot_until_it_ends(
    stack: ServiceStack,
) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND, router=ONE_STREAM)
    port = suite.router.metrics_port
    generate = router_pb2.GenerateRequest(
        model="default", messages=[common_pb2.Message(role="user", content="hi")], max_tokens=2
    )
    conversation = Client(suite.router_stub)
    conversation.send(prompt("t1", max_tokens=2))
    assert kinds(await conversation.turn("t1"))[-1] == "complete"
    assert await open_streams(port) == 1  # idle between turns, still held

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.router_stub.Complete(generate, metadata=AUTH, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert (info.reason, info.metadata["limit"]) == ("QUOTA_EXCEEDED", "max_concurrent_streams")
    second = Client(suite.router_stub)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await second.next()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), headers={"authorization": f"Bearer {API_KEY}"}) as ws,
    ):
        message = await asyncio.wait_for(ws.receive(), timeout=10)
        assert json.loads(message.data)["event"]["error"]["reason"] == "QUOTA_EXCEEDED"

    # The client goes away mid-turn (cancel): the slot comes back.
    conversation.send(prompt("long", max_tokens=2000))
    assert (await conversation.next()).event.WhichOneof("event") == "metadata"
    conversation.call.cancel()
    for _ in range(200):
        if await open_streams(port) == 0:
            break
        await asyncio.sleep(0.02)
    assert await open_streams(port) == 0
    answer = await suite.router_stub.Complete(generate, metadata=AUTH, timeout=10)
    assert answer.usage.output_tokens == 2

    # A WebSocket holds the slot too, and gives it back when it closes.
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), headers={"authorization": f"Bearer {API_KEY}"}) as ws,
    ):
        await ws.send_str(frame(prompt("w1", max_tokens=2)))
        assert "complete" in (await ws_turn(ws, "w1"))[-1]
        assert await open_streams(port) == 1
    for _ in range(200):
        if await open_streams(port) == 0:
            break
        await asyncio.sleep(0.02)
    assert await open_streams(port) == 0
