"""A fake Anthropic Messages server (``POST /v1/messages``), streaming and not.

Wire format as Anthropic documents it: named SSE events ``message_start``,
``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` /
``input_json_delta``), ``content_block_stop``, ``message_delta`` (stop_reason, usage),
``message_stop``, and in-stream ``error`` events; error bodies
``{"type": "error", "error": {"type", "message"}, "request_id"}`` with 529 for
``overloaded_error`` and ``anthropic-ratelimit-*`` / ``retry-after`` headers on 429.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import web

from tests.fakes.common import (
    FakeBehaviour,
    FakeServer,
    abort,
    answer_words,
    count_tokens,
    paced,
    receive,
    sse,
    tool_arguments,
)

# fault -> (HTTP status, error type, message)
_STATUS_FAULTS: dict[str, tuple[int, str, str]] = {
    "unauthorized": (401, "authentication_error", "invalid x-api-key"),
    "forbidden": (
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    "model_not_found": (404, "not_found_error", "model: {model}"),
    "context_length": (
        400,
        "invalid_request_error",
        "prompt is too long: {wanted} tokens > {window} maximum",
    ),
    "bad_request": (
        400,
        "invalid_request_error",
        "tools.0.custom.input_schema: JSON schema is invalid. It must match JSON Schema "
        "draft 2020-12",
    ),
    "request_timeout": (408, "timeout_error", "Request timed out."),
    "rate_limit": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per minute.",
    ),
    "server_error": (500, "api_error", "Internal server error"),
    "bad_gateway": (502, "api_error", "Bad gateway"),
    "unavailable": (503, "api_error", "Service unavailable"),
    "overloaded": (529, "overloaded_error", "Overloaded"),
}


class AnthropicFake(FakeServer):
    """POST /v1/messages."""

    def __init__(self, behaviour: FakeBehaviour | None = None) -> None:
        super().__init__([("POST", "/v1/messages", self._messages)], behaviour or FakeBehaviour())

    def _error(self, status: int, kind: str, message: str) -> web.Response:
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }
        response = web.json_response(body, status=status)
        response.headers["request-id"] = request_id
        return response

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        b = self.behaviour
        raw = await receive(b, request)
        if raw is None:
            return web.Response(status=500)
        try:
            body: dict[str, Any] = json.loads(raw)
        except ValueError:
            return self._error(400, "invalid_request_error", "invalid JSON body")
        b.requests.append(body)
        if "anthropic-version" not in request.headers:
            return self._error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        # Anthropic accepts the key as x-api-key or (newer clients) as a bearer token.
        keys = {request.headers.get("x-api-key"), request.headers.get("Authorization")}
        if b.api_key is not None and not keys & {b.api_key, f"Bearer {b.api_key}"}:
            return self._error(401, "authentication_error", "invalid x-api-key")
        model = str(body.get("model", ""))
        prompt = _prompt(body)
        input_tokens = count_tokens(prompt)
        max_tokens = int(body.get("max_tokens") or 0)
        if max_tokens < 1:
            return self._error(400, "invalid_request_error", "max_tokens: Field required")
        over = input_tokens + max_tokens > b.context_window
        if b.fault in _STATUS_FAULTS or (over and b.fault is None):
            fault = b.fault or "context_length"
            status, kind, message = _STATUS_FAULTS[fault]
            response = self._error(
                status,
                kind,
                message.format(
                    model=model, wanted=input_tokens + max_tokens, window=b.context_window
                ),
            )
            if fault in ("rate_limit", "overloaded"):
                response.headers["retry-after"] = str(b.retry_after_s)
            if fault == "rate_limit":
                response.headers.update(
                    {
                        "anthropic-ratelimit-requests-limit": "50",
                        "anthropic-ratelimit-requests-remaining": "0",
                        "anthropic-ratelimit-requests-reset": "2026-11-26T10:00:07Z",
                        "anthropic-ratelimit-tokens-limit": "40000",
                        "anthropic-ratelimit-tokens-remaining": "39000",
                        "anthropic-ratelimit-tokens-reset": "2026-11-26T10:00:01Z",
                    }
                )
            return response
        words = answer_words(prompt, max_tokens, b.answer_tokens)
        stop_reason = "max_tokens" if len(words) >= max_tokens else "end_turn"
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        tool_name = str(tools[0].get("name", "")) if tools else ""
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": b.cached_tokens,
            "output_tokens": len(words),
        }
        if not body.get("stream"):
            if b.fault == "malformed_json":
                return web.Response(text='{"type": "message", "content": [', status=200)
            content: list[dict[str, Any]]
            if tool_name:
                arguments = json.loads("".join(tool_arguments(prompt)))
                content = [
                    {"type": "tool_use", "id": "toolu_fake0", "name": tool_name, "input": arguments}
                ]
                stop_reason = "tool_use"
            else:
                content = [{"type": "text", "text": " ".join(words)}]
            return web.json_response(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                }
            )
        stream = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": f"req_{uuid.uuid4().hex[:24]}",
            },
        )
        await stream.prepare(request)
        return await self._stream(
            request,
            stream,
            body=body,
            model=model,
            message_id=message_id,
            usage=usage,
            words=words,
            stop_reason=stop_reason,
            tool_name=tool_name,
            prompt=prompt,
        )

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        *,
        body: dict[str, Any],
        model: str,
        message_id: str,
        usage: dict[str, int],
        words: list[str],
        stop_reason: str,
        tool_name: str,
        prompt: str,
    ) -> web.StreamResponse:
        b = self.behaviour

        async def send(kind: str, payload: dict[str, Any]) -> None:
            await response.write(sse(json.dumps({"type": kind, **payload}), event=kind))

        start_usage = {**usage, "output_tokens": 1}
        await send(
            "message_start",
            {
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                }
            },
        )
        if tool_name:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": "toolu_fake0",
                "name": tool_name,
                "input": {},
            }
            deltas = [
                {"type": "input_json_delta", "partial_json": p} for p in tool_arguments(prompt)
            ]
            stop_reason = "tool_use"
        else:
            block = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": word if i == 0 else " " + word}
                for i, word in enumerate(words)
            ]
        await send("content_block_start", {"index": 0, "content_block": block})
        await send("ping", {})
        items = [json.dumps(d) for d in deltas]
        async for index, item in paced(b, items):
            if index == b.fault_after and await self._mid_stream_fault(request, response):
                return response
            await send("content_block_delta", {"index": 0, "delta": json.loads(item)})
        if len(items) <= b.fault_after and await self._mid_stream_fault(request, response):
            return response
        await send("content_block_stop", {"index": 0})
        await send(
            "message_delta",
            {
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": len(words)},
            },
        )
        await send("message_stop", {})
        await response.write_eof()
        return response

    async def _mid_stream_fault(self, request: web.Request, response: web.StreamResponse) -> bool:
        """Inject the configured mid-stream fault; True when the stream must end here."""
        fault = self.behaviour.fault
        if fault == "reset_mid_stream":
            await abort(request)
            return True
        if fault == "malformed_json":
            await response.write(
                b'event: content_block_delta\ndata: {"type": "content_block_delta", \n\n'
            )
            await response.write_eof()
            return True
        if fault == "malformed_event":
            await response.write(
                sse(json.dumps({"type": "content_block_delta", "index": 0}), "content_block_delta")
            )
            await response.write_eof()
            return True
        if fault == "truncated":
            await response.write_eof()
            return True
        if fault == "stream_error":
            error = {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
            }
            await response.write(sse(json.dumps(error), event="error"))
            await response.write_eof()
            return True
        if fault == "stall":
            await asyncio.Event().wait()
        return False


def _prompt(body: dict[str, Any]) -> str:
    parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return "\n".join(parts)
