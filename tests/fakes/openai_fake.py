"""A fake OpenAI Chat Completions server (streaming and not), faults included.

Wire format as OpenAI documents it: ``chat.completion`` bodies, SSE ``data:`` lines of
``chat.completion.chunk`` ending with ``data: [DONE]``, a final usage chunk with empty
``choices`` when ``stream_options.include_usage`` is set, tool-call deltas by index,
and error bodies ``{"error": {"message", "type", "param", "code"}}`` with the
``x-ratelimit-*`` and ``retry-after`` headers on 429.
"""

from __future__ import annotations

import asyncio
import json
import time
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

MODELS = ("gpt-4o-mini", "gpt-4o")

# fault -> (HTTP status, error type, error code, message)
_STATUS_FAULTS: dict[str, tuple[int, str, str | None, str]] = {
    "unauthorized": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: {masked}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    "forbidden": (
        403,
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    "model_not_found": (
        404,
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    "context_length": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is {window} tokens. However, you requested "
        "{wanted} tokens. Please reduce the length of the messages or completion.",
    ),
    "bad_request": (
        400,
        "invalid_request_error",
        "invalid_function_parameters",
        "Invalid schema for function 'lookup': schema must be a JSON Schema of 'type: "
        '"object"\', got \'type: "None"\'.',
    ),
    "request_timeout": (408, "timeout", None, "Request timed out."),
    "rate_limit": (
        429,
        "tokens",
        "rate_limit_exceeded",
        "Rate limit reached for {model} on tokens per min (TPM): Limit 30000, Used 30000, "
        "Requested 120. Please try again in {retry}s.",
    ),
    "server_error": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "bad_gateway": (502, "server_error", None, "Bad gateway."),
    "unavailable": (503, "server_error", None, "The server is overloaded or not ready yet."),
    "overloaded": (503, "server_error", None, "The engine is currently overloaded."),
}


def _error(status: int, kind: str, code: str | None, message: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


def _masked(key: str) -> str:
    return f"{key[:3]}*****{key[-4:]}" if len(key) > 8 else "*****"


class OpenAIFake(FakeServer):
    """POST /v1/chat/completions and GET /v1/models."""

    def __init__(self, behaviour: FakeBehaviour | None = None) -> None:
        super().__init__(
            [
                ("POST", "/v1/chat/completions", self._chat),
                ("GET", "/v1/models", self._models),
            ],
            behaviour or FakeBehaviour(),
        )

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "system"}
                    for m in MODELS
                ],
            }
        )

    def _auth_failure(self, request: web.Request) -> web.Response | None:
        expected = self.behaviour.api_key
        if expected is None:
            return None
        sent = request.headers.get("Authorization", "")
        if sent == f"Bearer {expected}":
            return None
        status, kind, code, message = _STATUS_FAULTS["unauthorized"]
        key = sent.removeprefix("Bearer ")
        return _error(status, kind, code, message.format(masked=_masked(key)))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        b = self.behaviour
        raw = await receive(b, request)
        if raw is None:
            return web.Response(status=500)
        try:
            body: dict[str, Any] = json.loads(raw)
        except ValueError:
            return _error(400, "invalid_request_error", None, "We could not parse the JSON body.")
        b.requests.append(body)
        denied = self._auth_failure(request)
        if denied is not None:
            return denied
        model = str(body.get("model", ""))
        prompt = "\n".join(
            str(m.get("content") or "") for m in body.get("messages", []) if isinstance(m, dict)
        )
        input_tokens = count_tokens(prompt)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        if b.fault in _STATUS_FAULTS or (
            input_tokens + max_tokens > b.context_window and b.fault is None
        ):
            fault = b.fault or "context_length"
            status, kind, code, message = _STATUS_FAULTS[fault]
            text = message.format(
                masked="*****",
                model=model,
                window=b.context_window,
                wanted=input_tokens + max_tokens,
                retry=b.retry_after_s,
            )
            response = _error(status, kind, code, text)
            if fault == "rate_limit":
                response.headers.update(
                    {
                        "retry-after": str(b.retry_after_s),
                        "x-ratelimit-limit-requests": "500",
                        "x-ratelimit-remaining-requests": "499",
                        "x-ratelimit-reset-requests": "120ms",
                        "x-ratelimit-limit-tokens": "30000",
                        "x-ratelimit-remaining-tokens": "0",
                        "x-ratelimit-reset-tokens": f"{b.retry_after_s}s",
                    }
                )
            return response
        words = answer_words(prompt, max_tokens or b.answer_tokens, b.answer_tokens)
        if b.fault == "empty_answer":  # e.g. a reply the provider's content filter removed
            words = []
        finish = "length" if max_tokens and len(words) >= max_tokens else "stop"
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        tool_name = str(tools[0].get("function", {}).get("name", "")) if tools else ""
        common = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": len(words),
            "total_tokens": input_tokens + len(words),
            "prompt_tokens_details": {"cached_tokens": b.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        if not body.get("stream"):
            if b.fault == "malformed_json":
                return web.Response(text='{"id": "chatcmpl-1", "choices": [', status=200)
            reply: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
            if tool_name:
                arguments = "".join(tool_arguments(prompt))
                reply["tool_calls"] = [
                    {
                        "id": "call_fake0",
                        "type": "function",
                        "function": {"name": tool_name, "arguments": arguments},
                    }
                ]
                finish = "tool_calls"
            else:
                reply["content"] = " ".join(words)
            return web.json_response(
                {
                    **common,
                    "object": "chat.completion",
                    "choices": [
                        {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}
                    ],
                    "usage": usage,
                }
            )
        return await self._stream(
            request,
            body=body,
            common=common,
            words=words,
            finish=finish,
            usage=usage,
            tool_name=tool_name,
            prompt=prompt,
        )

    async def _stream(
        self,
        request: web.Request,
        *,
        body: dict[str, Any],
        common: dict[str, Any],
        words: list[str],
        finish: str,
        usage: dict[str, Any],
        tool_name: str,
        prompt: str,
    ) -> web.StreamResponse:
        b = self.behaviour
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) and b.fault != "no_usage"
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            payload: dict[str, Any] = {
                **common,
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
            }
            if include_usage:
                payload["usage"] = None
            return sse(json.dumps(payload))

        held: list[bytes] = []

        async def write(data: bytes) -> None:
            if b.burst:
                held.append(data)  # sent at the end, in one write
            else:
                await response.write(data)

        await write(chunk({"role": "assistant", "content": "", "refusal": None}))
        if tool_name:
            pieces = tool_arguments(prompt)
            first = {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_fake0",
                        "type": "function",
                        "function": {"name": tool_name, "arguments": ""},
                    }
                ]
            }
            items = [json.dumps(first)] + [
                json.dumps({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in pieces
            ]
            finish = "tool_calls"
        else:
            items = [
                json.dumps({"content": word if i == 0 else " " + word})
                for i, word in enumerate(words)
            ]
        async for index, item in paced(b, items):
            if index == b.fault_after and await self._mid_stream_fault(request, response):
                return response
            await write(chunk(json.loads(item)))
        if len(items) <= b.fault_after and await self._mid_stream_fault(request, response):
            return response
        await write(chunk({}, finish))
        if include_usage:
            await write(
                sse(
                    json.dumps(
                        {**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                    )
                )
            )
        await write(b"data: [DONE]\n\n")
        if held:
            await response.write(b"".join(held))
        await response.write_eof()
        return response

    async def _mid_stream_fault(self, request: web.Request, response: web.StreamResponse) -> bool:
        """Inject the configured mid-stream fault; True when the stream must end here."""
        fault = self.behaviour.fault
        if fault == "reset_mid_stream":
            await abort(request)
            return True
        if fault == "malformed_json":
            await response.write(b'data: {"id": "chatcmpl-1", "choices": [{"delta": \n\n')
            await response.write_eof()
            return True
        if fault == "malformed_event":
            await response.write(sse(json.dumps({"unexpected": True})))
            await response.write_eof()
            return True
        if fault == "truncated":
            await response.write_eof()
            return True
        if fault == "stream_error":
            error = {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            await response.write(sse(json.dumps(error)))
            await response.write_eof()
            return True
        if fault == "stall":
            await asyncio.Event().wait()
        return False
