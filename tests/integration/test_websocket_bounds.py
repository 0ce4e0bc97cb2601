"""WebSocket frames are parsed within the HTTP bodies' bounds (core/bounded_json.py):
hostile frames get an INVALID_INPUT error event, the socket stays open and serves on."""

from __future__ import annotations

import json

import aiohttp

from tests.integration.test_converse import frame, prompt, ws_turn, ws_url
from tests.support import API_KEY, ServiceStack, start_suite

HOSTILE = [
    "[" * 50_000 + "]" * 50_000,  # nested past http_api.max_json_depth
    '{"prompt":' * 100 + "{}" + "}" * 100,
    '{"prompt": {"turn_id": "t", "max_tokens": ' + "9" * 400 + "}}",
    '{"prompt": {"turn_id": "t", "temperature": NaN}}',
    '"just a string"',
    '{"prompt": {"turn_id": "\\ud800"}}',
]


async def test_hostile_frames_get_error_events_and_the_socket_serves_on(
    stack: ServiceStack,
) -> None:
    suite = await start_suite(stack)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(suite), headers={"authorization": f"Bearer {API_KEY}"}) as ws,
    ):
        for text in HOSTILE:
            await ws.send_str(text)
            (event,) = await ws_turn(ws, "")
            assert event["error"]["reason"] == "INVALID_INPUT", (text[:40], event)
            assert event["error"]["message"].startswith("the frame is not a ConverseRequest")
        await ws.send_str(frame(prompt("ok")))
        served = await ws_turn(ws, "ok")
    assert "complete" in served[-1], json.dumps(served)[:300]
