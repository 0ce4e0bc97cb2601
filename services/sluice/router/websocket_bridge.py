"""The WebSocket bridge of Converse: `GET /v1/ws` on the router's HTTP listener.

One WebSocket is one Converse stream. Each text frame from the client is one
`ConverseRequest` and each frame from the server one `ConverseEvent`, in protobuf's
JSON mapping (field names as in the proto, e.g. `turn_id`; the lowerCamelCase names
are accepted too). The conversation itself is router/converse.py, shared with gRPC.

Authentication, checked once when the socket opens:
- `Authorization: Bearer <key>` (or `x-api-key`) on the upgrade request, for clients
  that can set headers;
- for browsers, whose WebSocket API cannot: the subprotocols `sluice.v1` and
  `bearer.<key>` (`new WebSocket(url, ["sluice.v1", "bearer." + key])`); the server
  answers with `sluice.v1` only, so the key is not echoed back. A key in the URL
  (`?api_key=`) is deliberately not accepted: URLs end up in access logs, proxies and
  browser history. The key is never logged.
A missing or invalid key gets one `error` frame (AUTHORIZATION_ERROR, empty turn id)
and the close code 1008 (policy violation) with the reason in the close frame.

Close codes: 1000 when the client closes; 1001 on idle timeout (no frame from the
client and no turn running for `converse.websocket_idle_timeout_s`) and on router
shutdown; 1003 for a binary frame; 1008 for a bad key; 1009 for a frame over
`converse.websocket_max_message_bytes`. A text frame that is not a valid
`ConverseRequest` gets an INVALID_INPUT `error` frame (empty turn id); the socket stays
open. Closing the socket cancels the running turn and its provider call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from google.protobuf import json_format
from opentelemetry import trace

from sluice.core import headers
from sluice.core.bounded_json import MAX_DEPTH, parse_json_object
from sluice.core.errors import FieldViolation, InvalidInputError, SluiceError, ValidationError
from sluice.core.grpcx.call_context import CallContext, http_metadata
from sluice.core.grpcx.calls import served
from sluice.core.telemetry.metrics import RpcMetrics
from sluice.router.converse import Conversation, Converser, error_event
from sluice.router.v1 import router_pb2

log = logging.getLogger("sluice.router.websocket")

PATH = "/v1/ws"
SUBPROTOCOL = "sluice.v1"
KEY_SUBPROTOCOL_PREFIX = "bearer."
WS_METHOD = "/sluice.router.v1.WebSocket/Converse"
CLOSE_IDLE = WSCloseCode.GOING_AWAY
_MAX_CLOSE_REASON = 120  # a close frame's reason is at most 123 bytes


def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The upgrade request's headers the Generate pipeline reads, plus a subprotocol key."""
    metadata = list(http_metadata(request.headers.items()))
    has_key = any(key in (headers.AUTHORIZATION, headers.API_KEY) for key, _ in metadata)
    if not has_key:
        for offered in request.headers.getall("Sec-WebSocket-Protocol", ()):
            for item in offered.split(","):
                protocol = item.strip()
                if protocol.startswith(KEY_SUBPROTOCOL_PREFIX):
                    metadata.append(
                        (headers.AUTHORIZATION, "Bearer " + protocol[len(KEY_SUBPROTOCOL_PREFIX) :])
                    )
                    break
    return tuple(metadata)


def to_json(event: router_pb2.ConverseEvent) -> str:
    """One server frame: the event in protobuf's JSON mapping, every field present."""
    return json_format.MessageToJson(
        event,
        preserving_proto_field_name=True,
        indent=None,
        always_print_fields_with_no_presence=True,
    )


def _reason(text: str) -> bytes:
    return text.encode()[:_MAX_CLOSE_REASON]


class WebSocketBridge:
    """aiohttp handler that runs a Converse conversation over a WebSocket."""

    def __init__(
        self,
        converser: Converser,
        metrics: RpcMetrics,
        tracer: trace.Tracer | None,
        *,
        max_json_depth: int = MAX_DEPTH,
    ) -> None:
        self._converser = converser
        self._max_json_depth = max_json_depth
        self._settings = converser.settings
        self._metrics = metrics
        self._tracer = tracer
        self._monotonic = converser.monotonic
        self._open: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    def register(self, app: web.Application) -> None:
        """Route `GET /v1/ws` here and close open sockets when the app shuts down."""
        app.router.add_get(PATH, self.handle)
        app.on_shutdown.append(self._close_all)

    async def _close_all(self, _app: web.Application) -> None:
        for ws in list(self._open):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the router is shutting down")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One WebSocket: authenticate, then relay frames both ways until either side ends."""
        call = CallContext(metadata=_metadata(request), peer=request.remote or "")
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            max_msg_size=self._settings.websocket_max_message_bytes,
            heartbeat=self._settings.websocket_heartbeat_s,
        )
        try:
            upgradable = ws.can_prepare(request).ok
        except ValueError:
            # aiohttp's handshake fails on a non-ASCII Sec-WebSocket-Key (base64) or
            # -Version (its error text cannot be encoded): a bad upgrade, not our failure.
            upgradable = False
        if not upgradable:
            message = "this path takes a WebSocket upgrade"
            return web.json_response(
                {"error": {"message": message, "code": "invalid_input"}}, status=400
            )
        await ws.prepare(request)
        self._open.add(ws)
        try:
            with served(WS_METHOD, call.metadata, self._metrics, self._tracer) as rpc:
                try:
                    conversation = self._converser.open(call)
                except SluiceError as error:
                    rpc.fail(error)
                    await ws.send_str(to_json(error_event("", error)))
                    await ws.close(
                        code=WSCloseCode.POLICY_VIOLATION,
                        message=_reason(f"{error.reason}: {error.message}"),
                    )
                    return ws
                await self._serve(ws, conversation)
        finally:
            self._open.discard(ws)
        return ws

    async def _serve(self, ws: web.WebSocketResponse, conversation: Conversation) -> None:
        writer = asyncio.create_task(self._write(ws, conversation), name="ws-writer")
        try:
            await self._read(ws, conversation)
        finally:
            conversation.close_input(cancel_running=True)
            await conversation.aclose()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if not ws.closed:
                await ws.close()

    async def _write(self, ws: web.WebSocketResponse, conversation: Conversation) -> None:
        try:
            async for event in conversation.events():
                await ws.send_str(to_json(event))
        except ConnectionError:
            pass  # the client went away; the reader sees the socket close

    async def _read(self, ws: web.WebSocketResponse, conversation: Conversation) -> None:
        idle_s = self._settings.websocket_idle_timeout_s
        last_active = self._monotonic()
        while True:
            if conversation.busy:
                last_active = self._monotonic()
            last_active = max(last_active, conversation.last_turn_end)
            wait = last_active + idle_s - self._monotonic()
            if wait <= 0:
                await ws.close(code=CLOSE_IDLE, message=b"idle timeout")
                return
            try:
                message = await ws.receive(timeout=min(wait, idle_s))
            except TimeoutError:
                continue
            last_active = self._monotonic()
            if message.type == WSMsgType.TEXT:
                await self._submit(conversation, message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.close(
                    code=WSCloseCode.UNSUPPORTED_DATA,
                    message=b"send ConverseRequest JSON in text frames",
                )
                return
            else:  # CLOSE, CLOSING, CLOSED, ERROR (e.g. a frame over the size limit)
                return

    async def _submit(self, conversation: Conversation, text: Any) -> None:
        # Parsed within the HTTP bodies' bounds (core/bounded_json.py): json_format.Parse
        # alone recurses on deep nesting and takes any number.
        try:
            value = parse_json_object(
                str(text),
                field="frame",
                max_bytes=self._settings.websocket_max_message_bytes,
                max_depth=self._max_json_depth,
            )
            request = json_format.ParseDict(value, router_pb2.ConverseRequest())
        except ValidationError as error:
            await conversation.reject(
                "", _bad_frame(error.message.removeprefix("invalid request: "))
            )
            return
        except (json_format.ParseError, ValueError, TypeError, RecursionError) as error:
            await conversation.reject("", _bad_frame(str(error)[:200]))
            return
        await conversation.submit(request)


def _bad_frame(problem: str) -> InvalidInputError:
    message = f"the frame is not a ConverseRequest in JSON: {problem}"
    return InvalidInputError(
        message,
        metadata={"cause": "bad_frame"},
        field_violations=[FieldViolation("frame", message)],
    )
