"""Converse through real Envoy (`sluice up`): the WebSocket bridge at /v1/ws and native
gRPC, with the cancel asserted on the provider's own span."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.common.v1 import common_pb2
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.e2e.conftest import DEV_KEY, RunningSuite, start_suite

pytestmark = pytest.mark.e2e

PROVIDER_STREAM = "/sluice.provider.v1.ProviderService/Stream"
AUTH = {"authorization": f"Bearer {DEV_KEY}"}
CANCEL_BUDGET_NS = 100_000_000  # cancel frame sent -> provider stream ended


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    # 40 tokens/s for up to 4000 tokens: a turn that only a cancel ends within the test.
    with start_suite(
        tmp_path_factory.mktemp("ws-edge"),
        provider={
            "backends": {
                "simulated": {
                    "time_to_first_token_ms": 20,
                    "tokens_per_second": 40,
                    "answer_tokens": 4000,
                }
            },
        },
    ) as running:
        yield running


def prompt(turn_id: str, *, max_tokens: int = 4, follows: str = "") -> dict[str, Any]:
    return {
        "prompt": {
            "turn_id": turn_id,
            "follows_turn_id": follows,
            "request": {
                "model": "default",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"turn {turn_id}: tell me about locks"}],
            },
        }
    }


def ws_url(edge: RunningSuite) -> str:
    return f"{edge.edge}/v1/ws"


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.receive(), timeout=15)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    event: dict[str, Any] = json.loads(message.data)
    return event


async def ws_turn(ws: aiohttp.ClientWebSocketResponse, turn_id: str) -> list[dict[str, Any]]:
    events = []
    while True:
        event = await receive(ws)
        assert event["turn_id"] == turn_id, event
        events.append(event["event"])
        if "complete" in event["event"] or "error" in event["event"]:
            return events


def provider_streams(edge: RunningSuite, outcome: str) -> float:
    text = httpx.get(edge.metrics_url("provider"), timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "sluice_provider_streams_total"
                and sample.labels.get("outcome") == outcome
            ):
                return float(sample.value)
    return 0.0


async def cancelled_provider_span(
    edge: RunningSuite, trace_id: str, turns: set[str]
) -> tuple[telemetry_pb2.Span, list[telemetry_pb2.Span]]:
    """The provider's cancelled server span in the trace (a WebSocket's turns share its
    trace) and the whole trace, once the telemetry service has it and the turns' spans."""
    async with edge.channel("telemetry") as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                trace = await stub.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=trace_id))
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
            else:
                found = [
                    s
                    for s in trace.spans
                    if s.service_name == "sluice-provider"
                    and s.name == PROVIDER_STREAM
                    and "cancelled" in s.event_names
                ]
                seen = {s.attributes.get("sluice.turn_id") for s in trace.spans}
                if found and turns <= seen:
                    assert len(found) == 1
                    span: telemetry_pb2.Span = found[0]
                    return span, list(trace.spans)
            await asyncio.sleep(0.1)
    raise AssertionError(f"no provider span in trace {trace_id}")


def ancestors(span: telemetry_pb2.Span, spans: list[telemetry_pb2.Span]) -> list[str]:
    by_id = {s.span_id: s for s in spans}
    names = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        names.append(f"{span.name}:{span.attributes.get('sluice.turn_id', '')}")
    return names


# -- WebSocket through Envoy -----------------------------------------------------------------


async def test_two_turns_on_one_websocket_through_envoy(edge: RunningSuite) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(edge), headers=AUTH) as ws,
    ):
        await ws.send_str(json.dumps(prompt("t1")))
        first = await ws_turn(ws, "t1")
        await ws.send_str(json.dumps(prompt("t2", max_tokens=3, follows="t1")))
        second = await ws_turn(ws, "t2")
    assert "metadata" in first[0]
    assert len(first[0]["metadata"]["trace_id"]) == 32
    assert first[-1]["complete"]["usage"]["output_tokens"] == 4
    assert second[-1]["complete"]["usage"]["output_tokens"] == 3
    # The second turn carried the first one's prompt and answer.
    assert (
        second[-1]["complete"]["usage"]["input_tokens"]
        > first[-1]["complete"]["usage"]["input_tokens"] + 4
    )


async def test_cancel_stops_the_provider_stream_within_100ms(edge: RunningSuite) -> None:
    cancelled_before = provider_streams(edge, "cancelled")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(edge), headers=AUTH) as ws,
    ):
        await ws.send_str(json.dumps(prompt("slow", max_tokens=4000)))
        events: list[dict[str, Any]] = []
        while sum("data" in e for e in events) < 3:
            event = await receive(ws)
            assert event["turn_id"] == "slow"
            events.append(event["event"])
        sent_ns = time.time_ns()
        await ws.send_str(json.dumps({"cancel": {"turn_id": "slow"}}))
        rest = await ws_turn(ws, "slow")
        # The socket stays usable after the cancel.
        await ws.send_str(json.dumps(prompt("after")))
        after = await ws_turn(ws, "after")
    final = rest[-1]["error"]
    assert (final["reason"], final["grpc_code"]) == ("CANCELLED", "CANCELLED")
    assert "complete" in after[-1]
    assert provider_streams(edge, "cancelled") == cancelled_before + 1

    span, spans = await cancelled_provider_span(
        edge, events[0]["metadata"]["trace_id"], {"slow", "after"}
    )
    stopped_after_ns = span.end_time_unix_nano - sent_ns
    assert 0 < stopped_after_ns < CANCEL_BUDGET_NS, f"{stopped_after_ns / 1e6:.1f} ms"
    assert span.attributes["rpc.grpc.status_code"] == str(grpc.StatusCode.CANCELLED.value[0])
    # One trace per socket, one span per turn: the cancelled stream belongs to turn "slow".
    assert "converse turn:slow" in ancestors(span, spans)
    turns = {s.attributes["sluice.turn_id"] for s in spans if s.name == "converse turn"}
    assert {"slow", "after"} <= turns


async def test_a_bad_key_gets_an_error_frame_and_close_1008(edge: RunningSuite) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(edge), headers={"authorization": "Bearer sk-wrong"}) as ws,
    ):
        event = await receive(ws)
        closing = await asyncio.wait_for(ws.receive(), timeout=15)
    assert event["turn_id"] == ""
    assert event["event"]["error"]["reason"] == "AUTHORIZATION_ERROR"
    assert closing.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008
    assert closing.extra == "AUTHORIZATION_ERROR: invalid API key"


async def test_browser_style_key_and_an_invalid_frame(edge: RunningSuite) -> None:
    protocols = ("sluice.v1", f"bearer.{DEV_KEY}")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(edge), protocols=protocols) as ws,
    ):
        assert ws.protocol == "sluice.v1"
        await ws.send_str("this is not JSON")
        bad = await ws_turn(ws, "")
        await ws.send_str(json.dumps(prompt("ok")))
        served = await ws_turn(ws, "ok")
    assert bad[0]["error"]["reason"] == "INVALID_INPUT"
    assert bad[0]["error"]["grpc_code"] == "INVALID_ARGUMENT"
    assert "complete" in served[-1]


def test_only_a_websocket_upgrade_is_served_at_v1_ws(edge: RunningSuite) -> None:
    plain = httpx.get(ws_url(edge), headers=AUTH, timeout=10)
    posted = httpx.post(ws_url(edge), headers=AUTH, timeout=10)
    assert plain.status_code == 400
    assert posted.status_code == 404  # only GET is routed


# -- native gRPC Converse, through Envoy and directly -----------------------------------


class _Requests:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[router_pb2.ConverseRequest | None] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[router_pb2.ConverseRequest]:
        while (request := await self.queue.get()) is not None:
            yield request


def grpc_prompt(turn_id: str, max_tokens: int = 4) -> router_pb2.ConverseRequest:
    return router_pb2.ConverseRequest(
        prompt=router_pb2.ConversePrompt(
            turn_id=turn_id,
            request=router_pb2.GenerateRequest(
                model="default",
                max_tokens=max_tokens,
                messages=[common_pb2.Message(role="user", content="tell me about weirs")],
            ),
        )
    )


@pytest.mark.parametrize("via", ["envoy", "router"])
async def test_grpc_converse_turns_and_cancel(edge: RunningSuite, via: str) -> None:
    requests = _Requests()
    edge_channel = grpc.aio.insecure_channel(edge.grpc("envoy"))
    async with edge_channel if via == "envoy" else edge.channel("router") as channel:
        call = router_pb2_grpc.RouterServiceStub(channel).Converse(
            requests.__aiter__(), metadata=tuple(AUTH.items())
        )

        async def turn(turn_id: str) -> list[router_pb2.GenerateEvent]:
            events = []
            while True:
                message = await asyncio.wait_for(call.read(), timeout=15)
                assert isinstance(message, router_pb2.ConverseEvent), message
                assert message.turn_id == turn_id
                events.append(message.event)
                if message.event.WhichOneof("event") in ("complete", "error"):
                    return events

        requests.queue.put_nowait(grpc_prompt("one"))
        one = await turn("one")
        requests.queue.put_nowait(grpc_prompt("long", max_tokens=4000))
        first = await asyncio.wait_for(call.read(), timeout=15)
        requests.queue.put_nowait(
            router_pb2.ConverseRequest(cancel=router_pb2.ConverseCancel(turn_id="long"))
        )
        long = await turn("long")
        requests.queue.put_nowait(None)
        assert await asyncio.wait_for(call.read(), timeout=15) is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert one[-1].complete.usage.output_tokens == 4
    assert first.event.WhichOneof("event") == "metadata"
    assert long[-1].error.reason == "CANCELLED"


async def test_grpc_converse_with_a_bad_key_through_envoy(edge: RunningSuite) -> None:
    requests = _Requests()
    async with grpc.aio.insecure_channel(edge.grpc("envoy")) as channel:
        call = router_pb2_grpc.RouterServiceStub(channel).Converse(
            requests.__aiter__(), metadata=(("authorization", "Bearer sk-wrong"),)
        )
        requests.queue.put_nowait(grpc_prompt("one"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), timeout=15)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
