"""The adaptive buffer between a provider stream and the client writer.

Two modes, chosen per stream as it runs:

* **Direct** (the client keeps up, the common case): each event is handed to the writer
  the moment it arrives. The only cost per event is one clock read and one comparison
  (plus the writer's own `behind()` check when it has one); no task, no timer.
* **Buffered** (the client fell behind: a write took longer than `slow_write_ms`, or the
  writer reports its transport buffer filling): from then on a reader task pulls the
  provider stream into a bounded `PendingEvents` while the writer drains it. Deltas that
  arrive while a write is in progress are coalesced into one data event; a held batch is
  flushed as soon as the writer has caught up, when it reaches `initial_buffer_size`, or
  `flush_interval_ms` after its first delta, whichever comes first. When the held text
  reaches `backpressure_threshold x max_buffer_size` the reader stops reading the provider
  stream until the writer has taken the batch, so a stalled client pauses the provider
  (through gRPC flow control) instead of growing the router's memory.

Events pass here unnumbered: the pipeline numbers them as they leave
(router/relay.py), so merged events leave no gaps in a stream's `sequence`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from sluice.core.clock import Clock
from sluice.router.settings.streams import BufferSettings
from sluice.router.v1 import router_pb2

_DATA = "data"


class PendingEvents:
    """Events read from the provider but not yet written: pure logic, no I/O, no time.

    Consecutive data events are merged while the merged text stays within
    `max_buffer_size`; other events (metadata, progress, tool calls, the end) are kept
    as they are, in order.
    """

    __slots__ = ("_events", "_last_data_bytes", "bytes", "max_bytes", "since")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._events: list[router_pb2.GenerateEvent] = []
        self._last_data_bytes = -1  # bytes of the last event when it is data, else -1
        self.bytes = 0
        """Text bytes held."""
        self.since = 0.0
        """Clock time the oldest held event arrived."""

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: router_pb2.GenerateEvent, now: float) -> None:
        """Hold one more event (merged into the previous one when both are data)."""
        if not self._events:
            self.since = now
        if event.WhichOneof("event") == _DATA:
            size = len(event.data.text.encode())
            self.bytes += size
            if self._last_data_bytes >= 0 and self._last_data_bytes + size <= self.max_bytes:
                last = self._events[-1].data
                last.text += event.data.text
                last.token_count += event.data.token_count
                self._last_data_bytes += size
                return
            self._last_data_bytes = size
        else:
            self._last_data_bytes = -1
        self._events.append(event)

    def due(self, now: float, *, behind: bool, flush_bytes: int, interval_s: float) -> bool:
        """Whether the held events should be written now."""
        return bool(self._events) and (
            not behind or self.bytes >= flush_bytes or now - self.since >= interval_s
        )

    def take(self) -> list[router_pb2.GenerateEvent]:
        """Everything held, in order; the buffer is empty afterwards."""
        events = self._events
        self._events = []
        self._last_data_bytes = -1
        self.bytes = 0
        return events


class _Channel:
    """The reader task's side of buffered mode and the writer's, joined by two futures."""

    def __init__(self, settings: BufferSettings, clock: Clock) -> None:
        self.pending = PendingEvents(settings.max_buffer_size)
        self.clock = clock
        self.pause_bytes = settings.pause_bytes
        self.ended = False
        self.error: BaseException | None = None
        self.in_flight = 0
        """Text bytes handed to the writer and not yet written."""
        self._has_events: asyncio.Future[None] | None = None
        self._has_room: asyncio.Future[None] | None = None

    # -- reader side -----------------------------------------------------------------

    async def pump(self, source: AsyncIterator[router_pb2.GenerateEvent]) -> None:
        """Read the provider stream into `pending`, pausing at the backpressure mark."""
        try:
            async for event in source:
                self.pending.add(event, self.clock.monotonic())
                _wake(self._has_events)
                if self.pending.bytes + self.in_flight >= self.pause_bytes:
                    self._has_room = asyncio.get_running_loop().create_future()
                    await self._has_room  # the provider read stops here
                    self._has_room = None
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # handed to the writer, raised there
            self.error = error
        finally:
            self.ended = True
            _wake(self._has_events)

    # -- writer side -----------------------------------------------------------------

    async def next_batch(
        self, behind: Callable[[], bool] | None, flush_bytes: int, interval_s: float
    ) -> list[router_pb2.GenerateEvent]:
        """The next events to write (empty at the end of the stream); called again once
        they are written, which frees their bytes."""
        pending = self.pending
        self.in_flight = 0
        if pending.bytes < self.pause_bytes:
            _wake(self._has_room)
        while True:
            now = self.clock.monotonic()
            lagging = behind is not None and not self.ended and behind()
            if pending.due(now, behind=lagging, flush_bytes=flush_bytes, interval_s=interval_s):
                self.in_flight = pending.bytes
                return pending.take()
            if self.ended:
                if self.error is not None:
                    error, self.error = self.error, None
                    raise error
                return []
            # Wait for more events, or (while events are held) until the flush is due.
            timeout = interval_s - (now - pending.since) if len(pending) else None
            self._has_events = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._has_events, timeout)
            self._has_events = None


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


async def adaptive(
    events: AsyncIterator[router_pb2.GenerateEvent],
    settings: BufferSettings,
    clock: Clock,
    behind: Callable[[], bool] | None = None,
) -> AsyncGenerator[router_pb2.GenerateEvent, None]:
    """`events` as the client should get them: at once while it keeps up, coalesced and
    bounded once it lags (see the module docstring).

    `behind` is the writer's own, non-blocking "my transport still holds unsent bytes"
    (`CallContext.writer_behind`: the HTTP front has one); without it only slow writes
    reveal a lagging client.
    """
    slow_s = settings.slow_write_ms / 1000.0
    monotonic = clock.monotonic
    iterator = events.__aiter__()
    reader: asyncio.Future[None] | None = None
    try:
        async for event in iterator:
            started = monotonic()
            yield event
            if monotonic() - started >= slow_s or (behind is not None and behind()):
                break
        else:
            return
        channel = _Channel(settings, clock)
        reader = asyncio.ensure_future(channel.pump(iterator))
        flush_bytes = settings.initial_buffer_size
        interval_s = settings.flush_interval_ms / 1000.0
        while batch := await channel.next_batch(behind, flush_bytes, interval_s):
            for event in batch:
                yield event
    finally:
        if reader is not None:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        # The relay owns the stream it read: closing it stops the provider call at once.
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
