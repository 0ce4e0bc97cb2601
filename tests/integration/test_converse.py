"""Converse: prompts and cancels on one bidirectional stream, over gRPC and the WebSocket
bridge on the router's HTTP listener (through Envoy: tests/e2e/test_websocket_edge.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import json_format

from sluice.common.v1 import common_pb2
from sluice.core.tokens import count_tokens
from sluice.limiter.service import build_server as build_limiter
from sluice.provider.service import build_server as build_provider
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.wiring import build_server as build_router
from tests.support import (
    API_KEY,
    AUTH,
    SLOW_BACKEND,
    ServiceStack,
    Suite,
    eventually,
    limiter_settings,
    metric,
    provider_settings,
    router_settings,
    start_suite,
)

FIRST = "How does a sluice gate keep the canal level?"
SECOND = "And what happens in a flood?"
CANCELLED = {"backend": "simulated", "outcome": "cancelled"}


def prompt(
    turn_id: str, text: str = FIRST, *, follows: str = "", max_tokens: int = 6, **fields: Any
) -> router_pb2.ConverseRequest:
    return router_pb2.ConverseRequest(
        prompt=router_pb2.ConversePrompt(
            turn_id=turn_id,
            follows_turn_id=follows,
            request=router_pb2.GenerateRequest(
                model="default",
                messages=[common_pb2.Message(role="user", content=text)] if text else [],
                max_tokens=max_tokens,
                **fields,
            ),
        )
    )


def cancel(turn_id: str) -> router_pb2.ConverseRequest:
    return router_pb2.ConverseRequest(cancel=router_pb2.ConverseCancel(turn_id=turn_id))


class Client:
    """A Converse call with a queue of client messages and a per-event read."""

    def __init__(self, stub: router_pb2_grpc.RouterServiceStub, metadata: Any = AUTH) -> None:
        self._outbox: asyncio.Queue[router_pb2.ConverseRequest | None] = asyncio.Queue()
        self.call = stub.Converse(self._requests(), metadata=metadata)

    async def _requests(self) -> AsyncIterator[router_pb2.ConverseRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    def send(self, request: router_pb2.ConverseRequest) -> None:
        self._outbox.put_nowait(request)

    def half_close(self) -> None:
        self._outbox.put_nowait(None)

    async def next(self) -> router_pb2.ConverseEvent:
        event = await asyncio.wait_for(self.call.read(), timeout=10)
        assert event is not grpc.aio.EOF, "the stream ended early"
        assert isinstance(event, router_pb2.ConverseEvent)
        return event

    async def turn(self, turn_id: str) -> list[router_pb2.GenerateEvent]:
        """The events of one turn up to and including its final one."""
        events = []
        while True:
            event = await self.next()
            assert event.turn_id == turn_id, (event.turn_id, turn_id)
            events.append(event.event)
            if event.event.WhichOneof("event") in ("complete", "error"):
                return events


def kinds(events: list[router_pb2.GenerateEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


# -- gRPC ---------------------------------------------------------------------------


async def test_two_turns_run_in_order_and_the_second_continues_the_first(suite: Suite) -> None:
    client = Client(suite.router_stub)
    client.send(prompt("t1"))
    first = await client.turn("t1")
    client.send(prompt("t2", SECOND, follows="t1"))
    second = await client.turn("t2")
    client.half_close()
    assert await client.call.read() is grpc.aio.EOF
    assert await client.call.code() == grpc.StatusCode.OK

    for events in (first, second):
        assert kinds(events)[0] == "metadata"
        assert kinds(events)[-1] == "complete"
        assert kinds(events).count("complete") == 1
        assert [e.sequence for e in events] == list(range(len(events)))
    answer = "".join(e.data.text for e in first if e.WhichOneof("event") == "data")
    # The follow-up turn sent the first prompt, its answer and the new prompt.
    assert first[-1].complete.usage.input_tokens == count_tokens(FIRST)
    assert second[-1].complete.usage.input_tokens == count_tokens(f"{FIRST}\n{answer}\n{SECOND}")
    # Each turn is its own request.
    assert first[0].metadata.request_id != second[0].metadata.request_id
    turns = await metric(suite.router.metrics_port, "sluice_router_converse_turns_total")
    assert turns == 2


async def test_cancel_stops_the_running_turn_and_its_provider_stream(stack: ServiceStack) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)
    provider = suite.provider.metrics_port
    client = Client(suite.router_stub)
    client.send(prompt("slow", max_tokens=2000))
    seen: list[router_pb2.GenerateEvent] = []
    while kinds(seen).count("data") < 2:
        event = await client.next()
        assert event.turn_id == "slow"
        seen.append(event.event)
    client.send(cancel("slow"))
    rest = await client.turn("slow")
    final = rest[-1]
    assert final.WhichOneof("event") == "error"
    assert (final.error.reason, final.error.grpc_code) == ("CANCELLED", "CANCELLED")
    assert final.error.usage.output_tokens >= 2
    assert [e.sequence for e in seen + rest] == list(range(len(seen) + len(rest)))

    async def cancelled() -> float:
        return await metric(provider, "sluice_provider_streams_total", **CANCELLED)

    assert await eventually(cancelled, lambda n: n == 1) == 1
    # The stream goes on: a cancel of an ended turn is ignored, the next turn is served.
    client.send(cancel("slow"))
    client.send(prompt("next", max_tokens=3))
    assert kinds(await client.turn("next"))[-1] == "complete"
    client.half_close()
    assert await client.call.read() is grpc.aio.EOF
    outcomes = {
        outcome: await metric(
            suite.router.metrics_port, "sluice_router_converse_turns_total", outcome=outcome
        )
        for outcome in ("cancelled", "completed")
    }
    assert outcomes == {"cancelled": 1, "completed": 1}


async def test_cancel_reaches_a_provider_that_sends_nothing(stack: ServiceStack) -> None:
    # A back end that accepted the request and never sends a token: no event will come
    # that the turn could react to, so the cancel must reach the provider call itself.
    limiter = await stack.start(build_limiter(limiter_settings()))
    provider = await stack.start(build_provider(provider_settings(fault_injection=True)))
    router = await stack.start(build_router(router_settings(limiter, provider)))
    stub = router_pb2_grpc.RouterServiceStub(stack.channel(router))
    client = Client(stub, metadata=(*AUTH, ("x-sluice-fault", "hang=true")))
    client.send(prompt("hung"))

    async def streams(outcome: str) -> float:
        port = provider.metrics_port
        return await metric(port, "sluice_provider_streams_total", outcome=outcome)

    # Wait for the back end's "start" (the metadata event): a cancel sent before it would
    # legitimately end the turn with a lone error, and this test is about the hung read.
    first = await client.next()
    assert (first.turn_id, first.event.WhichOneof("event")) == ("hung", "metadata")
    client.send(cancel("hung"))
    events = [first.event, *await client.turn("hung")]
    assert kinds(events) == ["metadata", "error"]  # the back end said only "start"
    assert (events[-1].error.reason, events[-1].sequence) == ("CANCELLED", 1)
    assert await eventually(lambda: streams("cancelled"), lambda n: n == 1) == 1
    client.half_close()
    assert await client.call.read() is grpc.aio.EOF


async def test_bad_messages_get_an_error_event_for_their_turn_and_the_stream_goes_on(
    stack: ServiceStack,
) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)
    client = Client(suite.router_stub)
    client.send(cancel("never-started"))
    unknown = await client.turn("never-started")
    client.send(prompt("empty", ""))
    empty = await client.turn("empty")
    client.send(router_pb2.ConverseRequest())
    no_action = await client.turn("")
    client.send(prompt("missing-history", follows="nope"))
    missing = await client.turn("missing-history")
    client.send(prompt("", FIRST))
    no_id = await client.turn("")

    client.send(prompt("long", max_tokens=2000))
    assert (await client.next()).event.WhichOneof("event") == "metadata"
    client.send(prompt("overlapping"))
    client.send(prompt("long"))  # a reused id
    # The refusals arrive while "long" streams on; collect until both are seen.
    refusals: dict[str, router_pb2.ErrorEvent] = {}
    while len(refusals) < 2:
        event = await client.next()
        if event.event.WhichOneof("event") == "error":
            refusals[f"{event.turn_id}:{len(refusals)}"] = event.event.error
        else:
            assert event.turn_id == "long"
    client.send(cancel("long"))
    assert (await client.turn("long"))[-1].error.reason == "CANCELLED"
    client.send(prompt("after"))
    assert kinds(await client.turn("after"))[-1] == "complete"

    def reason(events: list[router_pb2.GenerateEvent]) -> tuple[str, str, int]:
        assert kinds(events) == ["error"]
        return events[0].error.reason, events[0].error.grpc_code, events[0].sequence

    assert reason(unknown) == ("INVALID_INPUT", "INVALID_ARGUMENT", 0)
    # An invalid prompt is validated exactly as Generate validates it.
    assert reason(empty) == ("MISSING_PARAMETER", "INVALID_ARGUMENT", 0)
    assert "messages" in empty[0].error.message
    assert reason(no_action) == ("MISSING_PARAMETER", "INVALID_ARGUMENT", 0)
    assert reason(missing) == ("INVALID_INPUT", "INVALID_ARGUMENT", 0)
    assert reason(no_id) == ("MISSING_PARAMETER", "INVALID_ARGUMENT", 0)
    messages = {key.split(":")[0]: error.message for key, error in refusals.items()}
    assert "still running" in messages["overlapping"]
    assert "already used" in messages["long"]
    client.half_close()
    assert await client.call.read() is grpc.aio.EOF


async def test_a_bad_key_ends_the_call_unauthenticated(suite: Suite) -> None:
    client = Client(suite.router_stub, metadata=(("authorization", "Bearer sk-wrong"),))
    client.send(prompt("t1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(client.call.read(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_client_that_goes_away_cancels_the_running_turn(stack: ServiceStack) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)
    client = Client(suite.router_stub)
    client.send(prompt("slow", max_tokens=2000))
    assert (await client.next()).event.WhichOneof("event") == "metadata"
    client.call.cancel()

    async def cancelled() -> float:
        return await metric(
            suite.provider.metrics_port, "sluice_provider_streams_total", **CANCELLED
        )

    assert await eventually(cancelled, lambda n: n == 1) == 1


async def test_history_is_bounded_per_stream(stack: ServiceStack) -> None:
    suite = await start_suite(stack, router={"converse": {"max_history_turns": 1}})
    client = Client(suite.router_stub)
    for turn_id in ("a", "b"):
        client.send(prompt(turn_id))
        assert kinds(await client.turn(turn_id))[-1] == "complete"
    client.send(prompt("follows-a", follows="a"))  # evicted by "b"
    evicted = await client.turn("follows-a")
    client.send(prompt("follows-b", follows="b"))
    kept = await client.turn("follows-b")
    client.half_close()
    assert evicted[-1].error.reason == "INVALID_INPUT"
    assert kinds(kept)[-1] == "complete"


# -- WebSocket bridge -----------------------------------------------------------------


def ws_url(suite: Suite) -> str:
    return f"http://127.0.0.1:{suite.router.http_port}/v1/ws"


def frame(request: router_pb2.ConverseRequest) -> str:
    return json_format.MessageToJson(request, preserving_proto_field_name=True)


async def start_long_turn(ws: aiohttp.ClientWebSocketResponse, turn_id: str) -> None:
    """Send a prompt with a long answer and wait for its metadata frame."""
    await ws.send_str(frame(prompt(turn_id, max_tokens=2000)))
    message = await asyncio.wait_for(ws.receive(), timeout=10)
    assert "metadata" in json.loads(message.data)["event"]


async def ws_turn(ws: aiohttp.ClientWebSocketResponse, turn_id: str) -> list[dict[str, Any]]:
    events = []
    while True:
        message = await asyncio.wait_for(ws.receive(), timeout=10)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        event = json.loads(message.data)
        assert event["turn_id"] == turn_id, event
        events.append(event["event"])
        if "complete" in event["event"] or "error" in event["event"]:
            return events


async def test_websocket_two_turns_with_the_key_in_a_header(suite: Suite) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), headers={"authorization": f"Bearer {API_KEY}"}) as ws,
    ):
        await ws.send_str(frame(prompt("t1")))
        first = await ws_turn(ws, "t1")
        # lowerCamelCase field names are accepted too (protobuf's JSON mapping).
        await ws.send_str(
            json.dumps(
                {
                    "prompt": {
                        "turnId": "t2",
                        "followsTurnId": "t1",
                        "request": {
                            "model": "default",
                            "maxTokens": 4,
                            "messages": [{"role": "user", "content": SECOND}],
                        },
                    }
                }
            )
        )
        second = await ws_turn(ws, "t2")
    assert "metadata" in first[0]
    assert first[-1]["complete"]["usage"]["output_tokens"] == 6
    assert first[0]["sequence"] == 0  # every field is present, defaults included
    assert second[-1]["complete"]["usage"]["output_tokens"] == 4
    assert second[-1]["complete"]["finish_reason"] == "FINISH_REASON_LENGTH"


async def test_websocket_key_as_a_subprotocol_for_browsers(suite: Suite) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), protocols=("sluice.v1", f"bearer.{API_KEY}")) as ws,
    ):
        assert ws.protocol == "sluice.v1"  # the key is not echoed back
        await ws.send_str(frame(prompt("t1")))
        assert "complete" in (await ws_turn(ws, "t1"))[-1]


async def test_websocket_bad_key_gets_an_error_frame_and_close_1008(suite: Suite) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), headers={"authorization": "Bearer sk-wrong"}) as ws,
    ):
        error = await ws_turn(ws, "")
        closing = await asyncio.wait_for(ws.receive(), timeout=10)
    assert error[0]["error"]["reason"] == "AUTHORIZATION_ERROR"
    assert error[0]["error"]["grpc_code"] == "UNAUTHENTICATED"
    assert closing.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008
    assert closing.extra == "AUTHORIZATION_ERROR: invalid API key"


async def test_websocket_invalid_json_gets_an_error_frame_and_the_socket_stays_open(
    suite: Suite,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), headers={"authorization": f"Bearer {API_KEY}"}) as ws,
    ):
        await ws.send_str("{not json")
        broken = await ws_turn(ws, "")
        await ws.send_str('{"prompt": {"turn_id": "x", "unknown_field": 1}}')
        unknown = await ws_turn(ws, "")
        await ws.send_str(frame(prompt("t1")))
        served = await ws_turn(ws, "t1")
        await ws.send_bytes(b"\x00binary")
        closing = await asyncio.wait_for(ws.receive(), timeout=10)
    for error in (broken, unknown):
        assert error[0]["error"]["reason"] == "INVALID_INPUT"
        assert "not a ConverseRequest" in error[0]["error"]["message"]
    assert "complete" in served[-1]
    assert closing.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1003


async def test_websocket_cancel_and_close_stop_the_provider_stream(stack: ServiceStack) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)
    provider = suite.provider.metrics_port

    async def cancelled() -> float:
        return await metric(provider, "sluice_provider_streams_total", **CANCELLED)

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), headers={"authorization": f"Bearer {API_KEY}"}) as ws,
    ):
        await start_long_turn(ws, "slow")
        await ws.send_str(frame(cancel("slow")))
        events = await ws_turn(ws, "slow")
        assert events[-1]["error"]["reason"] == "CANCELLED"
        assert await eventually(cancelled, lambda n: n == 1) == 1
        # Closing the socket mid-turn cancels that turn's provider stream too.
        await ws.send_str(frame(prompt("abandoned", max_tokens=2000)))
        message = await asyncio.wait_for(ws.receive(), timeout=10)
        assert json.loads(message.data)["turn_id"] == "abandoned"
    assert await eventually(cancelled, lambda n: n == 2) == 2


async def test_websocket_limits_close_idle_and_oversized(stack: ServiceStack) -> None:
    suite = await start_suite(
        stack,
        router={"converse": {"websocket_idle_timeout_s": 0.3, "websocket_max_message_bytes": 2048}},
    )
    headers = {"authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(suite), headers=headers) as ws:
            closing = await asyncio.wait_for(ws.receive(), timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert (ws.close_code, closing.extra) == (1001, "idle timeout")
        async with http.ws_connect(ws_url(suite), headers=headers) as ws:
            await ws.send_str(frame(prompt("big", "x" * 4096)))
            closing = await asyncio.wait_for(ws.receive(), timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1009
        # A plain GET without the upgrade is refused.
        async with http.get(ws_url(suite)) as response:
            assert response.status == 400


async def test_turn_ids_per_stream_are_bounded(stack: ServiceStack) -> None:
    suite = await start_suite(stack, router={"converse": {"max_turns": 2}})
    client = Client(suite.router_stub)
    client.send(cancel("bogus"))  # a refused id counts as used
    assert (await client.turn("bogus"))[-1].error.reason == "INVALID_INPUT"
    client.send(prompt("a"))
    assert kinds(await client.turn("a"))[-1] == "complete"
    client.send(prompt("b"))
    refused = await client.turn("b")
    client.send(cancel("other"))  # still answered, not remembered
    assert (await client.turn("other"))[-1].error.reason == "INVALID_INPUT"
    client.half_close()
    assert await client.call.read() is grpc.aio.EOF
    assert refused[-1].error.reason == "INVALID_INPUT"
    assert "2 turns" in refused[-1].error.message


async def test_websocket_router_shutdown_closes_with_1001(stack: ServiceStack) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), headers={"authorization": f"Bearer {API_KEY}"}) as ws,
    ):
        await start_long_turn(ws, "slow")
        stopping = asyncio.create_task(stack.stop(suite.router))
        while True:  # data frames until the close
            message = await asyncio.wait_for(ws.receive(), timeout=10)
            if message.type != aiohttp.WSMsgType.TEXT:
                break
        await stopping
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert (ws.close_code, message.extra) == (1001, "the router is shutting down")
