"""The shape of every HTTP back end's call: pace, send, translate, stream, account.

``HttpBackend.stream`` owns what OpenAI and Anthropic share (pacing, timeouts, error
translation, usage accounting on every exit path, the GenAI span); a subclass only
builds the request and turns the provider's events into ours.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sluice.common.v1 import common_pb2
from sluice.core.bounded_json import parse_json_object
from sluice.core.clock import Clock
from sluice.core.errors import SluiceError
from sluice.core.tokens import count_tokens
from sluice.provider.coalescing import LoadCoalescer
from sluice.provider.genai import GenAIInstruments, UpstreamCall
from sluice.provider.settings import HttpBackendSettings
from sluice.provider.upstream import (
    ApiKey,
    Deadlines,
    Pacer,
    SseEvent,
    UpstreamClient,
    UpstreamRequest,
    UsageCount,
    parse_json,
    send,
    server_address,
    timed_batches,
    timeout_error,
    translate_status,
    translate_transport,
    usage_metadata,
)
from sluice.provider.v1 import provider_pb2

_UNSPECIFIED = common_pb2.FINISH_REASON_UNSPECIFIED
_MAX_ERROR_BODY = 64 * 1024
_DRAIN_S = 0.5
# The router bounds a tool's schema far lower (router.max_tool_parameters_bytes); this
# only keeps a direct caller from reaching the parser with more than a gRPC message holds.
_MAX_TOOL_PARAMETERS_BYTES = 4 * 1024 * 1024


def tool_parameters(tool: common_pb2.Tool, index: int) -> dict[str, Any]:
    """A tool's parameter schema as the object a back end expects. Not JSON, nested too
    deep or not an object: the caller's mistake, a VALIDATION_ERROR (never INTERNAL, which
    the router would count against this back end's breaker)."""
    if not tool.parameters_json:
        return {"type": "object", "properties": {}}
    return parse_json_object(
        tool.parameters_json,
        field=f"tools[{index}].parameters_json",
        max_bytes=_MAX_TOOL_PARAMETERS_BYTES,
    )


@dataclass(slots=True)
class CallState:
    """What one upstream call has produced so far."""

    usage: UsageCount
    call: UpstreamCall
    finish: common_pb2.FinishReason = _UNSPECIFIED
    done: bool = False
    tool_slots: dict[int, int] = field(default_factory=dict)

    def text(self, text: str) -> provider_pb2.StreamEvent | None:
        """A delta event for generated text (None for empty text)."""
        if not text:
            return None
        count = count_tokens(text)
        self.usage.streamed_output += count
        self.call.chunk(text)
        return provider_pb2.StreamEvent(delta=provider_pb2.TokenDelta(text=text, token_count=count))

    def tool_call(
        self, index: int, *, call_id: str = "", name: str = "", arguments: str = ""
    ) -> provider_pb2.StreamEvent:
        """A tool-call event; arguments count towards the output estimate."""
        self.usage.streamed_output += count_tokens(arguments)
        self.call.chunk()
        self.call.tool(name)
        return provider_pb2.StreamEvent(
            tool_call=common_pb2.ToolCallDelta(
                index=index, id=call_id, name=name, arguments_delta=arguments
            )
        )


class HttpBackend:
    """Base of the OpenAI and Anthropic back ends."""

    kind = ""
    provider_name = ""

    def __init__(
        self,
        name: str,
        settings: HttpBackendSettings,
        *,
        client: UpstreamClient,
        key: ApiKey | None,
        clock: Clock,
        instruments: GenAIInstruments,
        coalescer: LoadCoalescer | None = None,
    ) -> None:
        self.name = name
        self._coalescer = coalescer
        self.settings = settings
        self.pacer = Pacer(settings.pacing)
        self._client = client
        self._key = key
        self._clock = clock
        self._instruments = instruments
        self._address = server_address(settings.base_url)
        self._base = settings.base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.settings.base_url!r})"

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    # -- what subclasses provide -------------------------------------------------------

    def build(self, request: provider_pb2.StreamRequest, model: str) -> UpstreamRequest:
        """The upstream HTTP request."""
        raise NotImplementedError

    def convert(self, item: SseEvent, state: CallState) -> list[provider_pb2.StreamEvent]:
        """Our events for one provider event; sets state.finish/done and usage."""
        raise NotImplementedError

    def check_complete(self, state: CallState) -> None:
        """Raise INVALID_RESPONSE when the stream ended before the answer did."""
        raise NotImplementedError

    async def events(
        self,
        batches: AsyncIterator[list[SseEvent]],
        state: CallState,
        held: list[provider_pb2.StreamEvent] | None = None,
    ) -> AsyncIterator[provider_pb2.StreamEvent]:
        """Our events from the provider's stream, text that arrived together coalesced.

        With `held`, text that arrived together with the end of the answer is put there
        instead of being yielded, so that the end can travel with it."""
        async for batch in batches:
            merged: provider_pb2.StreamEvent | None = None
            for item in batch:
                for event in self.convert(item, state):
                    if event.HasField("delta"):
                        if merged is None:
                            merged = event
                        else:
                            merged.delta.text += event.delta.text
                            merged.delta.token_count += event.delta.token_count
                        continue
                    if merged is not None:
                        yield merged
                        merged = None
                    yield event
                if state.done:
                    break
            if merged is not None:
                if state.done and held is not None:
                    held.append(merged)
                else:
                    yield merged
            if state.done:
                break
        self.check_complete(state)

    def whole(self, body: dict[str, Any], state: CallState) -> list[provider_pb2.StreamEvent]:
        """Our events from a non-streaming answer."""
        raise NotImplementedError

    # -- the call ----------------------------------------------------------------------

    def streams(self, request: provider_pb2.StreamRequest) -> bool:
        """Whether this call asks the provider for a stream (not for a caller that waits
        for the whole answer anyway: one JSON body costs less than a stream of chunks)."""
        return self.settings.stream and not request.whole_answer

    def _max_tokens(self, request: provider_pb2.StreamRequest) -> int:
        return request.max_tokens or self.settings.default_max_tokens

    async def stream(
        self, request: provider_pb2.StreamRequest
    ) -> AsyncIterator[provider_pb2.StreamEvent]:
        """Run one generation upstream and yield start, deltas/tool calls, end."""
        settings = self.settings
        model = settings.upstream_model(request.model)
        prompt_tokens = sum(count_tokens(m.content) for m in request.messages)
        call = UpstreamCall(
            self._instruments,
            self._clock,
            backend=self.name,
            provider=self.provider_name,
            request_model=model,
            address=self._address,
            max_tokens=request.max_tokens,
            temperature=request.temperature if request.HasField("temperature") else None,
            record_content=settings.record_content,
            prompt=request.messages,
        )
        state = CallState(usage=UsageCount(input_tokens=prompt_tokens), call=call)
        start = provider_pb2.StreamStart(backend=self.name, model=model)
        # The acceptance until it is sent, and the events held back to travel with the
        # end: each message costs both services a gRPC write and a read, and on a busy
        # core each is a wake-up of the router.
        unsent_start: provider_pb2.StreamStart | None = start
        tail: list[provider_pb2.StreamEvent] = []
        end_rides = request.whole_answer or request.end_with_last_output
        error_type: str | None = None
        try:
            await self.pacer.acquire(prompt_tokens + self._max_tokens(request))
            deadlines = Deadlines(settings.timeouts, self._clock, whole=request.whole_answer)
            try:
                response = await send(
                    self._client, self.build(request, model), deadlines, self.name
                )
            except aiohttp.ClientError as err:
                raise translate_transport(self.name, err) from err
            try:
                if response.status != 200:
                    raise await self._status_error(response, deadlines)
                state.usage.accepted = True
                if self.streams(request):
                    sse = timed_batches(response, deadlines, self.name)
                    if not request.start_with_first_output:
                        yield provider_pb2.StreamEvent(start=start)
                        unsent_start = None
                    coalescer = self._coalescer
                    async for event in self.events(sse, state, tail if end_rides else None):
                        if unsent_start is not None:
                            event.started.CopyFrom(unsent_start)
                            unsent_start = None
                        yield event
                        # Under load, let the next tokens gather before reading them, so
                        # they travel as one message (provider/coalescing.py).
                        if coalescer is not None and (pause := coalescer.pause()):
                            await asyncio.sleep(pause)
                    # Read the rest of the body (normally just its terminating chunk) so
                    # the connection goes back to the pool instead of being closed.
                    with contextlib.suppress(SluiceError, aiohttp.ClientError, TimeoutError):
                        async with asyncio.timeout(_DRAIN_S):
                            async for _ in sse:
                                pass
                else:
                    if not (request.whole_answer or request.start_with_first_output):
                        yield provider_pb2.StreamEvent(start=start)
                        unsent_start = None
                    wait, which = deadlines.next_wait()
                    try:
                        async with asyncio.timeout(wait):
                            raw = await response.read()
                    except TimeoutError:
                        raise timeout_error(self.name, which, wait) from None
                    tail = self.whole(parse_json(raw.decode(errors="replace"), self.name), state)
            except aiohttp.ClientError as err:
                raise translate_transport(self.name, err) from err
            finally:
                # Back to the pool when the body was read to its end; closed otherwise.
                if response.content.at_eof():
                    response.release()
                else:
                    response.close()
            if state.finish == _UNSPECIFIED:
                state.finish = common_pb2.FINISH_REASON_STOP
            end = provider_pb2.StreamEnd(finish_reason=state.finish, usage=state.usage.finish())
            if tail and end_rides:
                tail[-1].ended.CopyFrom(end)
            else:
                tail.append(provider_pb2.StreamEvent(end=end))
            if unsent_start is not None:
                tail[0].started.CopyFrom(unsent_start)
            for event in tail:
                yield event
        except SluiceError as err:
            error_type = err.reason
            # What the call consumed so far travels with the error (never lost).
            err.metadata.update(usage_metadata(state.usage.finish()))
            raise
        except Exception:
            error_type = "INTERNAL"
            raise
        except BaseException:
            error_type = "CANCELLED"
            raise
        finally:
            call.finish(state.usage.finish(), state.finish, error_type)

    async def _status_error(
        self, response: aiohttp.ClientResponse, deadlines: Deadlines
    ) -> SluiceError:
        body = b""
        try:
            wait, _ = deadlines.next_wait()
            async with asyncio.timeout(wait):
                while len(body) < _MAX_ERROR_BODY and (part := await response.content.readany()):
                    body += part
        except (aiohttp.ClientError, TimeoutError):
            pass  # the status alone still says what went wrong
        return translate_status(
            self.name,
            response.status,
            response.headers,
            body[:_MAX_ERROR_BODY],
            key=self._key,
            clock=self._clock,
        )

    def auth_headers(self) -> dict[str, str]:
        """Subclasses override: the provider's auth header(s)."""
        return {}
