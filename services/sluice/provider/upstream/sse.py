"""Server-Sent Events: the decoder, and reading a response's events on time."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from sluice.core.errors import InvalidResponseError
from sluice.provider.upstream.deadlines import Deadlines, timeout_error


@dataclass(slots=True)
class SseEvent:
    """One Server-Sent Event: its type ("message" when unnamed) and its data."""

    event: str
    data: str


class SseDecoder:
    """The WHATWG event-stream parser, fed text as it arrives, returning whole events."""

    def __init__(self) -> None:
        self._pending = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[SseEvent]:
        """Every event completed by `text` (an incomplete line waits for more)."""
        lines = (self._pending + text).splitlines(keepends=True)
        self._pending = ""
        if lines and not lines[-1].endswith(("\n", "\r")):
            self._pending = lines.pop()
        elif lines and lines[-1].endswith("\r"):
            # "\r" may be the first half of "\r\n": keep it until the next byte says.
            self._pending = lines.pop()
        events: list[SseEvent] = []
        for raw in lines:
            line = raw.rstrip("\r\n")
            if not line:
                if self._data:
                    events.append(SseEvent(self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
                continue
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            # "id" and "retry" matter to reconnecting browsers, not to one LLM call.
        return events

    def flush(self) -> None:
        """Account for the end of the body (a trailing "\r" line ending)."""
        if self._pending.endswith("\r"):
            self.feed("\n")


async def timed_batches(
    response: aiohttp.ClientResponse, deadlines: Deadlines, backend: str
) -> AsyncIterator[list[SseEvent]]:
    """The response's SSE events, grouped by the network read that completed them, each
    read within the first-token / idle / total limit. Events that arrive together can
    then travel together (one gRPC message instead of many)."""
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type != "text/event-stream":
        raise InvalidResponseError(
            f"back end '{backend}' did not answer with an event stream",
            metadata={"backend": backend, "content_type": content_type[:64]},
        )
    decoder = SseDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    content = response.content
    failure: aiohttp.ClientError | None = None
    while True:
        if failure is not None:
            raise failure
        wait, which = deadlines.next_wait()
        try:
            # asyncio.timeout (not wait_for): no task per read on the per-token path.
            async with asyncio.timeout(wait):
                raw = await content.readany()
        except TimeoutError:
            raise timeout_error(backend, which, wait) from None
        except aiohttp.ClientPayloadError as err:
            # aiohttp raises a reset before handing over the bytes that came with it;
            # take those first so that the tokens (and usage) they carry are not lost.
            failure, raw = err, _unread(content)
            if not raw:
                raise
        if not raw:
            decoder.feed(text_decoder.decode(b"", final=True))
            decoder.flush()
            return
        batch = decoder.feed(text_decoder.decode(raw))
        if batch:
            deadlines.first = False
            yield batch


def _unread(content: aiohttp.StreamReader) -> bytes:
    """Bytes already received but not yet read (aiohttp keeps them after an error)."""
    read_buffered = getattr(content, "_read_nowait", None)
    # Only on a path that already failed: the original error is the one raised and logged;
    # a changed private API here must not replace it.
    try:  # nosemgrep: sluice-swallowed-exception
        return read_buffered(-1) if read_buffered is not None else b""
    except Exception:
        return b""
