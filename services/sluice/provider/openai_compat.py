"""OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama, llama.cpp,
Groq, Together, OpenRouter...).

Streaming: SSE ``data:`` lines of ``chat.completion.chunk`` objects, ending with
``data: [DONE]``; ``stream_options.include_usage`` is always requested so usage is
exact (a final chunk with empty ``choices``). Servers that ignore it get estimated,
flagged usage. Tool calls arrive as ``delta.tool_calls`` pieces keyed by ``index``.
"""

from __future__ import annotations

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

FINISH_REASONS = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS,
    "function_call": common_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": common_pb2.FINISH_REASON_CONTENT_FILTER,
}


def _tool(tool: common_pb2.Tool, index: int) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool_parameters(tool, index)
    return {"type": "function", "function": function}


class OpenAIBackend(HttpBackend):
    """POST {base_url}/chat/completions."""

    kind = "openai"
    provider_name = "openai"

    def build(self, request: provider_pb2.StreamRequest, model: str) -> UpstreamRequest:
        settings = self.settings
        messages: list[dict[str, str]] = []
        for message in request.messages:
            item = {"role": message.role, "content": message.content}
            if message.name:
                item["name"] = message.name
            messages.append(item)
        body: dict[str, Any] = {"model": model, "messages": messages}
        if request.max_tokens:
            body[settings.max_tokens_field] = request.max_tokens
        if request.HasField("temperature"):
            body["temperature"] = round(request.temperature, 4)
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = [_tool(tool, index) for index, tool in enumerate(request.tools)]
        headers = {"Accept": "application/json"}
        if self.streams(request):
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            headers["Accept"] = "text/event-stream"
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        return json_request(f"{self._base}/chat/completions", body, headers)

    def _usage(self, usage: object, state: CallState) -> None:
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            state.usage.input_tokens, state.usage.input_exact = prompt, True
        if isinstance(completion, int):
            state.usage.output_tokens, state.usage.output_exact = completion, True
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            state.usage.cached_input_tokens = details["cached_tokens"]

    def _choice(self, choice: object, state: CallState, key: str) -> list[provider_pb2.StreamEvent]:
        """Our events for one choice of a chunk (`key` is "delta" or "message")."""
        if not isinstance(choice, dict):
            raise malformed(self.name, "a choice is not an object")
        if choice.get("index", 0) != 0:
            return []  # we ask for one choice; ignore any other
        delta = choice.get(key)
        if delta is None and key == "delta" and choice.get("finish_reason"):
            delta = {}
        if not isinstance(delta, dict):
            raise malformed(self.name, f"choice without {key}")
        out: list[provider_pb2.StreamEvent] = []
        content = delta.get("content")
        if isinstance(content, str) and (event := state.text(content)) is not None:
            out.append(event)
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise malformed(self.name, "tool_calls is not a list")
        for position, piece in enumerate(calls):
            if not isinstance(piece, dict):
                raise malformed(self.name, "a tool call is not an object")
            function = piece.get("function") or {}
            if not isinstance(function, dict):
                raise malformed(self.name, "a tool call's function is not an object")
            index = piece.get("index", position)
            out.append(
                state.tool_call(
                    index if isinstance(index, int) else position,
                    call_id=str(piece.get("id") or ""),
                    name=str(function.get("name") or ""),
                    arguments=str(function.get("arguments") or ""),
                )
            )
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            state.finish = FINISH_REASONS.get(reason, common_pb2.FINISH_REASON_STOP)
        return out

    def _chunk(
        self, chunk: dict[str, Any], state: CallState, key: str
    ) -> list[provider_pb2.StreamEvent]:
        if chunk.get("error"):
            raise translate_stream_error(
                self.name, chunk["error"], key=self._key, clock=self._clock
            )
        if isinstance(chunk.get("model"), str):
            state.call.response_model = chunk["model"]
        if isinstance(chunk.get("id"), str):
            state.call.response_id = chunk["id"]
        self._usage(chunk.get("usage"), state)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise malformed(self.name, "no choices")
        return [event for choice in choices for event in self._choice(choice, state, key)]

    def convert(self, item: SseEvent, state: CallState) -> list[provider_pb2.StreamEvent]:
        if item.data == "[DONE]":
            state.done = True
            return []
        return self._chunk(parse_json(item.data, self.name), state, "delta")

    def check_complete(self, state: CallState) -> None:
        # Lenient where servers differ: a finished answer without [DONE] is complete.
        if not state.done and state.finish == common_pb2.FINISH_REASON_UNSPECIFIED:
            raise malformed(self.name, "the stream ended before the answer finished")

    def whole(self, body: dict[str, Any], state: CallState) -> list[provider_pb2.StreamEvent]:
        events = self._chunk(body, state, "message")
        state.done = True
        return events
