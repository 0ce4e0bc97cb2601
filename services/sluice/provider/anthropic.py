"""Anthropic Messages (``POST {base_url}/messages``), streaming.

Events: ``message_start`` (input usage, cached input), ``content_block_start``
(a text block, or a ``tool_use`` block with the call's id and name),
``content_block_delta`` (``text_delta`` / ``input_json_delta``), ``content_block_stop``,
``message_delta`` (stop_reason, cumulative output usage), ``message_stop``, ``ping``
and in-stream ``error`` (e.g. ``overloaded_error``). Unknown event and delta types are
skipped, as Anthropic's versioning policy asks of clients.
"""

from __future__ import annotations

import json
from typing import Any

from sluice.common.v1 import common_pb2
from sluice.provider.http_backend import CallState, HttpBackend, tool_parameters
from sluice.provider.upstream import (
    SseEvent,
    UpstreamRequest,
    json_request,
    malformed,
    parse_json,
    translate_stream_error,
)
from sluice.provider.v1 import provider_pb2

STOP_REASONS = {
    "end_turn": common_pb2.FINISH_REASON_STOP,
    "stop_sequence": common_pb2.FINISH_REASON_STOP,
    "pause_turn": common_pb2.FINISH_REASON_STOP,
    "max_tokens": common_pb2.FINISH_REASON_LENGTH,
    "model_context_window_exceeded": common_pb2.FINISH_REASON_LENGTH,
    "tool_use": common_pb2.FINISH_REASON_TOOL_CALLS,
    "refusal": common_pb2.FINISH_REASON_CONTENT_FILTER,
}


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


class AnthropicBackend(HttpBackend):
    """POST {base_url}/messages with ``stream: true``."""

    kind = "anthropic"
    provider_name = "anthropic"

    def build(self, request: provider_pb2.StreamRequest, model: str) -> UpstreamRequest:
        settings = self.settings
        streams = self.streams(request)
        system = [m.content for m in request.messages if m.role == "system"]
        messages = [
            {"role": "assistant" if m.role == "assistant" else "user", "content": m.content}
            for m in request.messages
            if m.role != "system"
        ]
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": self._max_tokens(request),
            "messages": messages,
            "stream": streams,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.HasField("temperature"):
            # Anthropic's range is 0..1; ours is OpenAI's 0..2.
            body["temperature"] = round(min(request.temperature, 1.0), 4)
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.tools:
            body["tools"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool_parameters(tool, index),
                }
                for index, tool in enumerate(request.tools)
            ]
        headers = {
            "anthropic-version": settings.anthropic_version,
            "Accept": "text/event-stream" if streams else "application/json",
        }
        if self._key is not None:
            headers["x-api-key"] = self._key.reveal()
        return json_request(f"{self._base}/messages", body, headers)

    def _start_usage(self, usage: object, state: CallState) -> None:
        if not isinstance(usage, dict):
            return
        cached = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        if isinstance(usage.get("input_tokens"), int):
            # Anthropic's input_tokens excludes cache reads and writes; ours is the whole prompt.
            state.usage.input_tokens = usage["input_tokens"] + cached + written
            state.usage.cached_input_tokens = cached
            state.usage.input_exact = True

    def _event(self, payload: dict[str, Any], state: CallState) -> list[provider_pb2.StreamEvent]:
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            if not isinstance(message, dict):
                raise malformed(self.name, "message_start without message")
            if isinstance(message.get("model"), str):
                state.call.response_model = message["model"]
            if isinstance(message.get("id"), str):
                state.call.response_id = message["id"]
            self._start_usage(message.get("usage"), state)
            return []
        if kind == "content_block_start":
            block, index = payload.get("content_block"), payload.get("index")
            if not isinstance(block, dict) or not isinstance(index, int):
                raise malformed(self.name, "content_block_start without block or index")
            if block.get("type") == "tool_use":
                slot = state.tool_slots.setdefault(index, len(state.tool_slots))
                return [
                    state.tool_call(
                        slot, call_id=str(block.get("id") or ""), name=str(block.get("name") or "")
                    )
                ]
            text = block.get("text")
            event = state.text(text) if isinstance(text, str) else None
            return [event] if event is not None else []
        if kind == "content_block_delta":
            delta, index = payload.get("delta"), payload.get("index")
            if not isinstance(delta, dict) or not isinstance(index, int):
                raise malformed(self.name, "content_block_delta without delta or index")
            if delta.get("type") == "text_delta":
                text = delta.get("text")
                if not isinstance(text, str):
                    raise malformed(self.name, "text_delta without text")
                event = state.text(text)
                return [event] if event is not None else []
            if delta.get("type") == "input_json_delta":
                partial = delta.get("partial_json")
                if not isinstance(partial, str) or index not in state.tool_slots:
                    raise malformed(self.name, "input_json_delta outside a tool_use block")
                return [state.tool_call(state.tool_slots[index], arguments=partial)]
            return []  # thinking, signatures, citations: not part of our stream
        if kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                state.finish = STOP_REASONS.get(delta["stop_reason"], common_pb2.FINISH_REASON_STOP)
            usage = payload.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
                state.usage.output_tokens = usage["output_tokens"]
                state.usage.output_exact = True
            if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int):
                self._start_usage(usage, state)
            return []
        if kind == "message_stop":
            state.done = True
            return []
        if kind == "error":
            raise translate_stream_error(
                self.name, payload.get("error"), key=self._key, clock=self._clock
            )
        return []  # ping, content_block_stop, and event types newer than this adapter

    def convert(self, item: SseEvent, state: CallState) -> list[provider_pb2.StreamEvent]:
        return self._event(parse_json(item.data, self.name), state)

    def check_complete(self, state: CallState) -> None:
        if not state.done:
            raise malformed(self.name, "the stream ended before message_stop")

    def whole(self, body: dict[str, Any], state: CallState) -> list[provider_pb2.StreamEvent]:
        if body.get("type") != "message" or not isinstance(body.get("content"), list):
            raise malformed(self.name, "not a message")
        self._start_usage(body.get("usage"), state)
        events: list[provider_pb2.StreamEvent] = []
        for index, block in enumerate(body["content"]):
            if not isinstance(block, dict):
                raise malformed(self.name, "a content block is not an object")
            if block.get("type") == "text" and (event := state.text(str(block.get("text", "")))):
                events.append(event)
            elif block.get("type") == "tool_use":
                slot = state.tool_slots.setdefault(index, len(state.tool_slots))
                events.append(
                    state.tool_call(
                        slot,
                        call_id=str(block.get("id") or ""),
                        name=str(block.get("name") or ""),
                        arguments=json.dumps(block.get("input") or {}),
                    )
                )
        self._event({"type": "message_delta", "delta": body, "usage": body.get("usage")}, state)
        state.done = True
        return events
