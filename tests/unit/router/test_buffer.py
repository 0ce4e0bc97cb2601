"""The adaptive buffer (router/buffer.py): an injected clock and a fake writer.

Events reach the buffer unnumbered; the writer here takes them through the pipeline's
last stage (`StreamState.number`, router/relay.py), so each test also checks that the
numbers the client sees stay contiguous however the buffer merged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from sluice.router.buffer import PendingEvents, adaptive
from sluice.router.relay import StreamState
from sluice.router.settings.streams import BufferSettings
from sluice.router.v1 import router_pb2
from tests.support import FakeClock, eventually

SETTINGS = BufferSettings()


def data(text: str) -> router_pb2.GenerateEvent:
    return router_pb2.GenerateEvent(data=router_pb2.DataEvent(text=text, token_count=1))


def complete() -> router_pb2.GenerateEvent:
    return router_pb2.GenerateEvent(complete=router_pb2.CompleteEvent())


def new_state() -> StreamState:
    return StreamState(started=0.0)


async def numbered(
    events: AsyncIterator[router_pb2.GenerateEvent], state: StreamState
) -> AsyncIterator[router_pb2.GenerateEvent]:
    """The pipeline's last stage: each event leaves with the stream's next number."""
    async for event in events:
        yield state.number(event)


@dataclass
class FakeProvider:
    """A provider stream the test feeds by hand; counts what was read from it."""

    queue: asyncio.Queue[router_pb2.GenerateEvent | None] = field(default_factory=asyncio.Queue)
    read: int = 0
    state: StreamState = field(default_factory=new_state)

    def send(self, text: str) -> None:
        self.queue.put_nowait(data(text))

    def finish(self) -> None:
        self.queue.put_nowait(complete())
        self.queue.put_nowait(None)

    async def events(self) -> AsyncIterator[router_pb2.GenerateEvent]:
        while (event := await self.queue.get()) is not None:
            self.read += 1
            yield event


@dataclass
class FakeWriter:
    """A client whose writes complete when the test says so (or at once)."""

    clock: FakeClock
    blocked: asyncio.Event = field(default_factory=asyncio.Event)
    write_takes_s: float = 0.0
    lagging: bool = False
    written: list[router_pb2.GenerateEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.blocked.set()

    def behind(self) -> bool:
        return self.lagging

    async def consume(self, events: AsyncIterator[router_pb2.GenerateEvent]) -> None:
        async for event in events:
            self.written.append(event)
            self.clock.advance(self.write_takes_s)
            await self.blocked.wait()

    def texts(self) -> list[str]:
        return [e.data.text for e in self.written if e.WhichOneof("event") == "data"]


async def settle() -> None:
    """Let every ready task run (no time passes: the clock is fake)."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- PendingEvents: pure logic ----------------------------------------------------------


def test_consecutive_deltas_merge_into_one_event() -> None:
    pending = PendingEvents(max_bytes=1024)
    pending.add(data("a"), now=1.0)
    pending.add(data("bc"), now=2.0)
    pending.add(complete(), now=3.0)
    assert pending.bytes == 3
    assert pending.since == 1.0
    events = pending.take()
    assert [e.WhichOneof("event") for e in events] == ["data", "complete"]
    assert events[0].data.text == "abc"
    assert events[0].data.token_count == 2
    assert pending.bytes == 0
    assert len(pending) == 0


def test_a_merged_event_never_grows_past_max_bytes() -> None:
    pending = PendingEvents(max_bytes=8)
    for _ in range(5):
        pending.add(data("abc"), now=0.0)
    sizes = [len(e.data.text) for e in pending.take()]
    assert sizes == [6, 6, 3]
    assert max(sizes) <= 8


def test_bytes_are_counted_in_utf8() -> None:
    pending = PendingEvents(max_bytes=1024)
    pending.add(data("é€"), now=0.0)
    assert pending.bytes == 5


@pytest.mark.parametrize(
    ("behind", "held_bytes", "age_s", "due"),
    [
        (False, 1, 0.0, True),  # the writer caught up: flush at once
        (True, 1, 0.0, False),  # lagging, small and young: keep coalescing
        (True, 1, 0.125, True),  # held past the flush interval: flush
        (True, 4096, 0.0, True),  # reached the initial buffer size: flush
    ],
)
def test_when_held_events_are_due(behind: bool, held_bytes: int, age_s: float, due: bool) -> None:
    pending = PendingEvents(max_bytes=65_536)
    pending.add(data("x" * held_bytes), now=10.0)
    assert pending.due(10.0 + age_s, behind=behind, flush_bytes=4096, interval_s=0.1) is due


def test_nothing_held_is_never_due() -> None:
    assert not PendingEvents(64).due(5.0, behind=False, flush_bytes=1, interval_s=0.0)


def test_settings_defaults_follow_the_spec_and_bad_values_fail() -> None:
    assert (SETTINGS.initial_buffer_size, SETTINGS.max_buffer_size) == (4096, 65_536)
    assert (SETTINGS.flush_interval_ms, SETTINGS.backpressure_threshold) == (100, 0.8)
    assert SETTINGS.pause_bytes == 52_428
    with pytest.raises(ValidationError, match="initial_buffer_size"):
        BufferSettings(initial_buffer_size=8192, max_buffer_size=4096)
    with pytest.raises(ValidationError, match="backpressure_threshold"):
        BufferSettings(backpressure_threshold=1.5)


# -- adaptive(): the relay with a fake writer -------------------------------------------


async def test_a_client_that_keeps_up_gets_every_delta_at_once() -> None:
    clock = FakeClock()
    provider = FakeProvider()
    writer = FakeWriter(clock)
    consumer = asyncio.ensure_future(
        writer.consume(numbered(adaptive(provider.events(), SETTINGS, clock), provider.state))
    )
    for i in range(5):
        provider.send(f"t{i} ")
        await settle()
        # Written before the next delta exists: nothing is held back when idle.
        assert writer.texts() == [f"t{j} " for j in range(i + 1)]
    provider.finish()
    await asyncio.wait_for(consumer, 5)
    assert [e.sequence for e in writer.written] == list(range(6))
    assert provider.state.sequence == 6


async def test_deltas_arriving_during_a_slow_write_are_coalesced_into_one_event() -> None:
    clock = FakeClock()
    provider = FakeProvider()
    writer = FakeWriter(clock, write_takes_s=1.0)  # every write is "slow"
    consumer = asyncio.ensure_future(
        writer.consume(numbered(adaptive(provider.events(), SETTINGS, clock), provider.state))
    )
    provider.send("first ")
    await settle()
    assert writer.texts() == ["first "]  # slow, but done: from now on the stream is buffered
    writer.blocked.clear()  # the next write does not complete
    provider.send("second ")
    await settle()
    assert writer.texts() == ["first ", "second "]
    for i in range(10):
        provider.send(f"t{i} ")
    await settle()
    assert provider.read == 12  # read on while the writer was busy
    writer.blocked.set()
    await settle()
    provider.finish()
    await asyncio.wait_for(consumer, 5)
    assert writer.texts() == ["first ", "second ", "".join(f"t{i} " for i in range(10))]
    assert writer.written[2].data.token_count == 10
    # Sequence numbers stay contiguous, and the stream's counter agrees.
    assert [e.sequence for e in writer.written] == [0, 1, 2, 3]
    assert provider.state.sequence == 4


async def test_a_stalled_client_stops_the_provider_read_at_the_backpressure_mark() -> None:
    settings = BufferSettings(max_buffer_size=1024, initial_buffer_size=256)
    clock = FakeClock()
    provider = FakeProvider()
    writer = FakeWriter(clock, write_takes_s=1.0)
    consumer = asyncio.ensure_future(
        writer.consume(numbered(adaptive(provider.events(), settings, clock), provider.state))
    )
    provider.send("x" * 100)
    await settle()  # one slow write: buffered from now on
    writer.blocked.clear()  # then the client stops reading
    for _ in range(200):
        provider.send("x" * 100)  # 20,000 more bytes offered
    await settle()
    # 1 written, then 9 read (900 bytes >= 0.8 x 1024 stops the reader) and handed to the
    # write that never completes: the rest stays unread.
    assert provider.read == 10
    await settle()
    assert provider.read == 10
    writer.blocked.set()  # the client comes back: reading resumes
    provider.finish()
    await asyncio.wait_for(consumer, 5)
    assert provider.read == 202
    assert "".join(writer.texts()) == "x" * 20_100
    assert max(len(t) for t in writer.texts()) <= 1024
    assert [e.sequence for e in writer.written] == list(range(len(writer.written)))


async def test_a_lagging_transport_holds_deltas_until_the_flush_interval() -> None:
    clock = FakeClock()
    provider = FakeProvider()
    writer = FakeWriter(clock, lagging=True)  # the socket's send buffer is not empty
    consumer = asyncio.ensure_future(
        writer.consume(
            numbered(adaptive(provider.events(), SETTINGS, clock, writer.behind), provider.state)
        )
    )
    provider.send("a")
    await settle()
    assert writer.texts() == ["a"]  # the first write reveals the lag
    provider.send("b")
    await settle()
    clock.advance(0.0625)
    provider.send("c")
    await settle()
    assert writer.texts() == ["a"]  # held: lagging, 2 bytes, 62.5 ms old
    clock.advance(0.0625)
    provider.send("d")  # 125 ms after "b": past the flush interval, the batch is due
    await settle()
    assert writer.texts() == ["a", "bcd"]
    writer.lagging = False
    provider.send("e")
    await settle()
    assert writer.texts() == ["a", "bcd", "e"]  # caught up: written at once again
    provider.finish()
    await asyncio.wait_for(consumer, 5)
    assert [e.sequence for e in writer.written] == [0, 1, 2, 3]


async def test_a_held_batch_is_flushed_by_time_alone_when_no_delta_follows() -> None:
    # flush_interval 1 ms of real time: the writer's wait ends without more input.
    settings = BufferSettings(flush_interval_ms=1)
    clock = FakeClock()
    provider = FakeProvider()
    writer = FakeWriter(clock, lagging=True)
    consumer = asyncio.ensure_future(
        writer.consume(
            numbered(adaptive(provider.events(), settings, clock, writer.behind), provider.state)
        )
    )
    provider.send("a")
    provider.send("b")
    await settle()
    assert writer.texts() == ["a"]
    clock.advance(0.002)  # the fake clock says the interval passed; the loop's timer fires

    async def texts() -> list[str]:
        return writer.texts()

    assert await eventually(texts, lambda t: t == ["a", "b"], within_s=5) == ["a", "b"]
    provider.finish()
    await asyncio.wait_for(consumer, 5)


async def test_a_provider_failure_reaches_the_writer_after_the_held_events() -> None:
    clock = FakeClock()
    state = new_state()

    async def failing() -> AsyncIterator[router_pb2.GenerateEvent]:
        for i in range(3):
            yield data(f"t{i}")
        raise RuntimeError("provider died")

    writer = FakeWriter(clock, write_takes_s=1.0)
    with pytest.raises(RuntimeError, match="provider died"):
        await asyncio.wait_for(
            writer.consume(numbered(adaptive(failing(), SETTINGS, clock), state)), 5
        )
    assert writer.texts() == ["t0", "t1t2"]
    assert state.sequence == 2  # the error event that follows gets the next number


async def test_closing_the_relay_stops_its_reader_and_the_provider_stream() -> None:
    clock = FakeClock()
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[router_pb2.GenerateEvent]:
        try:
            while True:
                yield data("x")
                await asyncio.sleep(0)
        finally:
            closed.set()

    relay = adaptive(endless(), SETTINGS, clock)
    await relay.__anext__()
    clock.advance(1.0)  # the first write was slow: buffered mode, a reader runs
    await relay.__anext__()
    await relay.aclose()
    assert closed.is_set()
