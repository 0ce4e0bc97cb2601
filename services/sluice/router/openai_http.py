"""The OpenAI-compatible HTTP API (`POST /v1/chat/completions`, `GET /v1/models`).

Served by the router process itself on its own HTTP listener (Envoy routes the two
paths here), so a request costs no extra gRPC hop: the handler runs the same
pipeline as `RouterService/Generate` (router/pipeline.py) and rewrites each event as an OpenAI
`chat.completion.chunk` (or one `chat.completion`). The per-token path is one string
concatenation and one write; the chunk's constant parts are built once per stream.

Errors before the first event are HTTP statuses with OpenAI's body
`{"error": {"message", "type", "param", "code"}}` (and `retry-after` on 429/503); a
failure mid-stream is sent in-band as a `data: {"error": ...}` event and the stream
ends without `data: [DONE]`, which the OpenAI SDKs raise as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import trace

from sluice.common.v1 import common_pb2
from sluice.core import headers
from sluice.core.bounded_json import MAX_DEPTH, parse_json_object
from sluice.core.errors import FieldViolation, InternalError, SluiceError, ValidationError
from sluice.core.grpcx.call_context import CallContext
from sluice.core.grpcx.calls import served
from sluice.core.grpcx.request_context import request_id_var
from sluice.core.telemetry.metrics import RpcMetrics
from sluice.router.pipeline import Pipeline
from sluice.router.relay import fold
from sluice.router.settings import HTTP_HEALTH_PATH
from sluice.router.v1 import router_pb2
from sluice.router.web_page import add_web_page

log = logging.getLogger("sluice.router.openai")

CHAT_METHOD = "/openai.v1.Chat/Completions"
MODELS_METHOD = "/openai.v1.Models/List"
_FINISH = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    common_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    412: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_SSE_HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
_DONE = b"data: [DONE]\n\n"


def error_body(error: SluiceError) -> dict[str, Any]:
    """OpenAI's error object for a Sluice error."""
    status = error.http_status
    param = None
    violations: Sequence[FieldViolation] = getattr(error, "field_violations", ()) or ()
    if violations:
        param = violations[0].field
    return {
        "error": {
            "message": error.message,
            "type": _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error"),
            "param": param,
            "code": error.reason.lower(),
        }
    }


def error_response(error: SluiceError) -> web.Response:
    """The HTTP error reply (status per docs/errors.md, retry-after when the error has one)."""
    reply = {}
    request_id = request_id_var.get()
    if request_id:  # as OpenAI does: the SDKs expose it on their error objects
        reply[headers.REQUEST_ID] = request_id
    if error.retry_after_s is not None:
        reply["retry-after"] = str(max(1, math.ceil(error.retry_after_s)))
        reply["retry-after-ms"] = str(int(error.retry_after_s * 1000))
    return web.json_response(error_body(error), status=error.http_status, headers=reply)


MAX_HEADER_BYTES = 128 * 1024
"""Longest request line or header line the listener reads (above the edge's bound)."""


@web.middleware
async def json_http_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 4xx replies (unknown file, wrong method, bad upgrade) in OpenAI's
    error shape, like every other error of this listener (docs/errors.md)."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400 or err.content_type == "application/json":
            raise
        code = "unsupported_operation" if err.status in (404, 405) else "invalid_input"
        body = {
            "error": {
                "message": (err.text or err.reason or "bad request")[:200],
                "type": _ERROR_TYPES.get(err.status, "invalid_request_error"),
                "param": None,
                "code": code,
            }
        }
        return web.json_response(body, status=err.status)


def _bad_request(message: str, field: str) -> ValidationError:
    return ValidationError(message, field_violations=[FieldViolation(field, message)])


def _text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad_request(
                    "only text content parts are supported", f"messages[{index}].content"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise _bad_request("content must be a string or a list of parts", f"messages[{index}].content")


def parse_chat_request(body: Any) -> tuple[router_pb2.GenerateRequest, bool, bool]:
    """An OpenAI chat request as (GenerateRequest, stream, include_usage); 400 on bad input."""
    if not isinstance(body, dict):
        raise _bad_request("the request body must be a JSON object", "body")
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise _bad_request("messages must be an array", "messages")
    request = router_pb2.GenerateRequest()
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise _bad_request("model must be a string", "model")
        request.model = model
    for index, message in enumerate(messages or ()):
        if not isinstance(message, dict):
            raise _bad_request("each message must be an object", f"messages[{index}]")
        role = message.get("role")
        if role == "developer":
            role = "system"
        request.messages.add(
            role=role if isinstance(role, str) else "",
            content=_text(message.get("content"), index),
            name=str(message.get("name") or ""),
        )
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit < 2**31:
            raise _bad_request("max_tokens must be a positive integer", "max_tokens")
        request.max_tokens = limit
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise _bad_request("temperature must be a number", "temperature")
        try:
            request.temperature = float(temperature)
        except OverflowError:  # an integer of hundreds of digits
            raise _bad_request("temperature is out of range", "temperature") from None
    stop = body.get("stop")
    if isinstance(stop, str):
        request.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        request.stop.extend(stop)
    elif stop is not None:
        raise _bad_request("stop must be a string or an array of strings", "stop")
    user = body.get("user")
    if isinstance(user, str):
        request.user = user[:256]
    n = body.get("n", 1)
    if n not in (1, None):
        raise _bad_request("only n=1 is supported", "n")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return request, stream, include_usage


def _usage(usage: common_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
    }


class OpenAIHttpApi:
    """aiohttp handlers over the router's generation pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        metrics: RpcMetrics,
        tracer: trace.Tracer | None,
        *,
        max_request_bytes: int,
        max_json_depth: int = MAX_DEPTH,
        shutdown_timeout_s: float = 15.0,
        pause_bytes: int = 0,
    ) -> None:
        self._max_request_bytes = max_request_bytes
        self._max_json_depth = max_json_depth
        self._pause_bytes = pause_bytes
        self._shutdown_timeout_s = shutdown_timeout_s
        self._pipeline = pipeline
        self._metrics = metrics
        self._tracer = tracer
        self.app = web.Application(
            client_max_size=max_request_bytes, middlewares=[json_http_errors]
        )
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_get(HTTP_HEALTH_PATH, self.health)
        self.draining = False
        """Set when the router begins a graceful stop: /healthz then answers 503."""
        add_web_page(self.app)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        """Bind and serve (TLS with `ssl_context`, router/http_tls.py); a client that
        disconnects cancels its handler (and upstream)."""
        self._runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout_s,
            # aiohttp's own 8 KiB per header line would answer a plain-text 400 to what
            # the edge lets through (envoy.limits.max_request_headers_kb, 60 KiB).
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024, ssl_context=ssl_context)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("OpenAI-compatible HTTP API on %s:%d", host, self.port)

    async def stop(self) -> None:
        """Stop accepting, then close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def drain(self) -> None:
        """The router is stopping: fail the health check so the edge sends no new request
        (in-flight ones finish; the listener closes after gRPC has drained)."""
        self.draining = True

    async def health(self, request: web.Request) -> web.Response:
        """Envoy's active health check of this listener (launcher/envoy/clusters.py)."""
        if self.draining:
            return web.json_response({"status": "NOT_SERVING"}, status=503)
        return web.json_response({"status": "SERVING"})

    # -- /v1/models ----------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's model list (plus Sluice's own `models` shape for existing clients)."""
        call = CallContext.of_http(request.headers, request.remote)
        with served(MODELS_METHOD, call.metadata, self._metrics, None) as rpc:
            try:
                listed = self._pipeline.list_models(call)
            except SluiceError as error:
                rpc.fail(error)
                return error_response(error)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m.id, "object": "model", "created": 0, "owned_by": "sluice"}
                    for m in listed.models
                ],
                "models": [
                    {
                        "id": m.id,
                        "backends": list(m.backends),
                        "default_max_tokens": m.default_max_tokens,
                    }
                    for m in listed.models
                ],
            }
        )

    # -- /v1/chat/completions ------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """One chat completion, streamed as SSE chunks when `stream` is true."""
        call = CallContext.of_http(request.headers, request.remote)
        with served(CHAT_METHOD, call.metadata, self._metrics, self._tracer) as rpc:
            try:
                try:
                    raw = await request.read()
                    # Bounded before parsing: depth, size, no NaN (core/bounded_json.py).
                    body = (
                        parse_json_object(
                            raw.decode(),
                            field="body",
                            max_bytes=self._max_request_bytes,
                            max_depth=self._max_json_depth,
                        )
                        if raw
                        else None
                    )
                except ValueError:
                    raise _bad_request("the request body is not valid JSON", "body") from None
                generate, stream, include_usage = parse_chat_request(body)
                if stream:  # the buffer watches the socket's send buffer (router/buffer.py)
                    call = call.writing_to(request.transport)
                events = self._pipeline.generate(generate, call, whole_answer=not stream)
                async with contextlib.aclosing(events):
                    if stream:
                        return await self._stream(request, generate, events, include_usage)
                    return await self._unary(generate, events)
            except SluiceError as error:
                rpc.fail(error)
                return error_response(error)
            except Exception as error:  # never shown to the client
                log.error("unhandled error in %s", CHAT_METHOD, exc_info=error)
                failure = InternalError("internal error; see the gateway logs for this request id")
                rpc.fail(failure)
                return error_response(failure)

    async def _unary(
        self, generate: router_pb2.GenerateRequest, events: AsyncIterator[router_pb2.GenerateEvent]
    ) -> web.StreamResponse:
        answer = await fold(events)
        meta, complete = answer.metadata, answer.complete
        return web.json_response(
            {
                "id": f"chatcmpl-{meta.request_id}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": generate.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.text},
                        "logprobs": None,
                        "finish_reason": _FINISH.get(complete.finish_reason, "stop"),
                    }
                ],
                "usage": _usage(complete.usage),
                "system_fingerprint": None,
            },
            headers=_meta_headers(meta, complete),
        )

    async def _stream(
        self,
        request: web.Request,
        generate: router_pb2.GenerateRequest,
        events: AsyncIterator[router_pb2.GenerateEvent],
        include_usage: bool,
    ) -> web.StreamResponse:
        # Nothing is sent before the first event, so an early failure is an HTTP status.
        first = await events.__anext__()
        meta = first.metadata if first.WhichOneof("event") == "metadata" else None
        if meta is None:
            meta = router_pb2.MetadataEvent(request_id=request_id_var.get())
            events = _prepend(first, events)
        head = json.dumps(
            {
                "id": f"chatcmpl-{meta.request_id}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": generate.model,
                "system_fingerprint": None,
            },
            separators=(",", ":"),
        )[:-1]
        usage_null = ',"usage":null' if include_usage else ""
        prefix = f'data: {head},"choices":[{{"index":0,"delta":{{"content":'
        suffix = f'}},"logprobs":null,"finish_reason":null}}]{usage_null}}}\n\n'
        response = web.StreamResponse(headers={**_SSE_HEADERS, **_meta_headers(meta, None)})
        await response.prepare(request)
        _bound_send_buffers(request.transport, self._pause_bytes)
        await response.write(
            f'data: {head},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},'
            f'"logprobs":null,"finish_reason":null}}]{usage_null}}}\n\n'.encode()
        )
        dumps = json.dumps
        write = response.write
        last = b""  # the final chunks go out with the end of the body: one write, not two
        try:
            async for event in events:
                kind = event.WhichOneof("event")
                if kind == "data":
                    await write((prefix + dumps(event.data.text) + suffix).encode())
                elif kind == "complete":
                    done = event.complete
                    finish = _FINISH.get(done.finish_reason, "stop")
                    tail = (
                        f'data: {head},"choices":[{{"index":0,"delta":{{}},"logprobs":null,'
                        f'"finish_reason":"{finish}"}}]{usage_null}}}\n\n'
                    )
                    if include_usage:
                        tail += (
                            f'data: {head},"choices":[],"usage":'
                            f"{dumps(_usage(done.usage), separators=(',', ':'))}}}\n\n"
                        )
                    last = tail.encode() + _DONE
                elif kind == "error":
                    await write(_error_event(event.error))
        except SluiceError:
            pass  # already sent in-band as the error event
        except Exception:  # the error event went out in-band; the client sees no [DONE]
            log.exception("stream failed after its first event")
        await response.write_eof(last)
        return response


def _bound_send_buffers(transport: asyncio.Transport | None, limit: int) -> None:
    """Cap what a stalled client can make this stream hold: the transport's buffer (then
    writes wait, and the provider read with them) and the kernel's unsent bytes (the
    socket's send buffer would otherwise autotune up to megabytes)."""
    if transport is None or not limit:
        return
    if transport.get_write_buffer_limits()[1] == limit:
        return  # a kept-alive connection: its earlier stream set both already
    transport.set_write_buffer_limits(high=limit)
    sock = transport.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, limit)


async def _prepend(
    first: router_pb2.GenerateEvent, rest: AsyncIterator[router_pb2.GenerateEvent]
) -> AsyncIterator[router_pb2.GenerateEvent]:
    yield first
    async for event in rest:
        yield event


def _error_event(error: router_pb2.ErrorEvent) -> bytes:
    body = {
        "error": {
            "message": error.message,
            "type": "server_error",
            "param": None,
            "code": error.reason.lower(),
        }
    }
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def _meta_headers(
    meta: router_pb2.MetadataEvent, complete: router_pb2.CompleteEvent | None
) -> dict[str, str]:
    reply = {
        headers.REQUEST_ID: meta.request_id,
        headers.TRACE_ID: meta.trace_id,
        headers.PROVIDER: meta.provider,
        headers.FALLBACK_STEP: common_pb2.FallbackStep.Name(meta.fallback_step),
    }
    if complete is not None and complete.fallback_step:
        reply[headers.FALLBACK_STEP] = common_pb2.FallbackStep.Name(complete.fallback_step)
    return reply
