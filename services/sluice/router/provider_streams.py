"""Provider streams: one Stream call each, or many multiplexed on a few long-lived calls.

The router opens one provider stream per attempt. As a gRPC call of its own that costs
the router and the provider ~0.35 ms of CPU each on loopback, about a fifth of what the
whole gateway spends on a request; as a frame on an open ProviderService.Multiplex call
it costs ~0.04 ms (the measurements are in docs/edge-benchmarks.md). Both give the same
events and the same typed errors, deadlines, cancellation, CLIENT spans and backpressure
(per-stream credit in place of HTTP/2's per-call window).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from sluice.core.errors import (
    NetworkFailureError,
    SluiceError,
    status_code,
)
from sluice.core.grpcx.methods import method_path
from sluice.core.telemetry.grpc_client import ClientSpans, TracedChannel
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from sluice.router.downstream import error_from_code, error_from_status
from sluice.router.settings.streams import MultiplexSettings

log = logging.getLogger("sluice.router.provider_streams")

PROVIDER_SERVICE = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"]
STREAM_METHOD = method_path(PROVIDER_SERVICE, "Stream")
MULTIPLEX_METHOD = method_path(PROVIDER_SERVICE, "Multiplex")
_OK = grpc.StatusCode.OK.value[0]

Metadata = Sequence[tuple[str, str | bytes]]


class ProviderCall(Protocol):
    """One provider stream: events in order, then the end (or a typed error)."""

    def __aiter__(self) -> AsyncIterator[provider_pb2.StreamEvent]: ...

    def cancel(self) -> bool: ...


class ProviderStreams(Protocol):
    """Opens provider streams."""

    def open(
        self, request: provider_pb2.StreamRequest, *, timeout: float, metadata: Metadata
    ) -> ProviderCall: ...

    async def close(self) -> None: ...


class StreamCalls:
    """One ProviderService.Stream call per stream (errors are grpc.aio.AioRpcError)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = provider_pb2_grpc.ProviderServiceStub(channel)

    def open(
        self, request: provider_pb2.StreamRequest, *, timeout: float, metadata: Metadata
    ) -> ProviderCall:
        """Start one Stream call."""
        call: ProviderCall = self._stub.Stream(request, timeout=timeout, metadata=metadata or None)
        return call

    async def close(self) -> None:
        """Nothing of its own to close (the channel is the caller's)."""


class MultiplexedCall:
    """One stream on a Multiplex call; raises the typed error its Stream call would."""

    __slots__ = (
        "_consumed",
        "_error",
        "_events",
        "_finished",
        "_session",
        "_span",
        "_threshold",
        "_timer",
        "_unsampled",
        "_waiter",
        "stream_id",
    )

    def __init__(
        self, session: _Session, stream_id: int, window: int, span: Any, unsampled: Any
    ) -> None:
        self._session = session
        self.stream_id = stream_id
        self._events: collections.deque[provider_pb2.StreamEvent] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._finished = False
        self._error: BaseException | None = None
        self._consumed = 0
        # Credit goes back in quarters of the window: few frames, and the provider
        # never waits for credit while the router keeps up.
        self._threshold = window // 4
        self._timer: asyncio.TimerHandle | None = None
        self._span = span  # the CLIENT span, ended with the stream (None untraced)
        self._unsampled = unsampled

    def __aiter__(self) -> MultiplexedCall:
        return self

    async def __anext__(self) -> provider_pb2.StreamEvent:
        events = self._events
        while not events:
            if self._finished:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        event = events.popleft()
        self._consumed += event.ByteSize()
        if self._consumed >= self._threshold:
            self._session.credit(self.stream_id, self._consumed)
            self._consumed = 0
        return event

    def cancel(self) -> bool:
        """Stop the stream at the provider (no-op once it ended)."""
        if self._finished:
            return False
        self._end(asyncio.CancelledError(), grpc.StatusCode.CANCELLED)
        self._session.cancel(self.stream_id)
        return True

    # -- from the session ----------------------------------------------------------------

    def deliver(self, event: provider_pb2.StreamEvent) -> None:
        if self._finished:
            return
        self._events.append(event)
        self._wake()

    def finish(self, status: status_pb2.Status) -> None:
        if self._finished:
            return
        if status.code == _OK:
            self._end(None, grpc.StatusCode.OK)
        else:
            code = status_code(status.code)
            self._end(error_from_status(status, "provider"), code)

    def fail(self, error: SluiceError, code: grpc.StatusCode) -> None:
        if not self._finished:
            self._end(error, code)

    def expire(self) -> None:
        if self._finished:
            return
        code = grpc.StatusCode.DEADLINE_EXCEEDED
        self._end(error_from_code(code, "provider"), code)
        self._session.cancel(self.stream_id)

    def _end(self, error: BaseException | None, code: grpc.StatusCode) -> None:
        self._finished = True
        self._error = error
        if self._timer is not None:
            self._timer.cancel()
        self._session.forget(self.stream_id)
        self._session.spans_end(self._span, self._unsampled, code)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Session:
    """One Multiplex call: a writer of batched frames and a reader of batched events."""

    def __init__(
        self,
        channel: Any,
        spans: ClientSpans | None,
        window: int,
        on_closed: Callable[[grpc.StatusCode], None],
    ) -> None:
        self._call = channel.stream_stream(
            MULTIPLEX_METHOD,
            request_serializer=provider_pb2.MultiplexRequest.SerializeToString,
            response_deserializer=provider_pb2.MultiplexResponse.FromString,
        )()
        self._spans = spans
        self._window = window
        self._on_closed = on_closed
        self._streams: dict[int, MultiplexedCall] = {}
        self._frames: list[provider_pb2.MultiplexFrame] = []
        self._ready = asyncio.Event()
        self._next_id = 1
        self.started = time.monotonic()
        self.closed = False
        self.retired = False
        self._writer = asyncio.ensure_future(self._write())
        self._reader = asyncio.ensure_future(self._read())

    def open(
        self, request: provider_pb2.StreamRequest, timeout: float, metadata: Metadata
    ) -> MultiplexedCall:
        stream_id = self._next_id
        self._next_id += 1
        span = unsampled = None
        if self._spans is not None:
            span, traced, unsampled = self._spans.begin(STREAM_METHOD, metadata)
            metadata = tuple(traced)
        call = MultiplexedCall(self, stream_id, self._window, span, unsampled)
        self._streams[stream_id] = call
        start = provider_pb2.MultiplexStart(
            request=request,
            timeout=_duration(timeout),
            metadata=[
                provider_pb2.MultiplexMetadata(
                    key=key,
                    value=value if isinstance(value, str) else value.decode(errors="replace"),
                )
                for key, value in metadata or ()
            ],
            window_bytes=self._window,
        )
        self._send(provider_pb2.MultiplexFrame(stream_id=stream_id, start=start))
        call._timer = asyncio.get_running_loop().call_later(timeout, call.expire)
        return call

    def credit(self, stream_id: int, size: int) -> None:
        self._send(
            provider_pb2.MultiplexFrame(
                stream_id=stream_id, credit=provider_pb2.MultiplexCredit(bytes=size)
            )
        )

    def cancel(self, stream_id: int) -> None:
        if not self.closed:
            self._send(
                provider_pb2.MultiplexFrame(
                    stream_id=stream_id, cancel=provider_pb2.MultiplexCancel()
                )
            )

    def forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        if self.retired and not self._streams:
            self._ready.set()  # the writer closes the call's side

    def spans_end(self, span: Any, unsampled: Any, code: grpc.StatusCode) -> None:
        if self._spans is not None and span is not None:
            self._spans.end(span, unsampled, code)

    def retire(self) -> None:
        """Take no new streams; close once the last one ends."""
        self.retired = True
        self._ready.set()

    def _send(self, frame: provider_pb2.MultiplexFrame) -> None:
        self._frames.append(frame)
        self._ready.set()

    async def _write(self) -> None:
        call = self._call
        try:
            while True:
                if not self._frames:
                    if self.retired and not self._streams:
                        await call.done_writing()
                        return
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                frames, self._frames = self._frames, []
                await call.write(provider_pb2.MultiplexRequest(frames=frames))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return  # the call ended; the reader reports why

    async def _read(self) -> None:
        call = self._call
        streams = self._streams
        code = grpc.StatusCode.UNAVAILABLE
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    code = grpc.StatusCode.OK  # closed after its last stream (retired)
                    break
                for event in message.events:
                    stream = streams.get(event.stream_id)
                    if stream is None:
                        continue  # cancelled or expired here already
                    if event.HasField("event"):
                        stream.deliver(event.event)
                    else:
                        stream.finish(event.status)
        except grpc.aio.AioRpcError as err:
            code = err.code()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._close(code)

    def _close(self, code: grpc.StatusCode) -> None:
        self.closed = True
        self._on_closed(code)
        if self._streams:
            error = (
                NetworkFailureError(
                    "the provider service is unreachable (its multiplexed call broke)",
                    metadata={"dependency": "provider"},
                )
                # OK: it ended (a provider stopping) with a start of ours on the way.
                if code
                in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                else error_from_code(code, "provider")
            )
            failed = grpc.StatusCode.UNAVAILABLE if code == grpc.StatusCode.OK else code
            for stream in list(self._streams.values()):
                stream.fail(error, failed)
        self._ready.set()
        self._writer.cancel()

    async def aclose(self) -> None:
        self._call.cancel()
        for task in (self._reader, self._writer):
            task.cancel()
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def split_target(target: str) -> list[str]:
    """One target per address of a multi-address target ("ipv4:a,b" -> "ipv4:a",
    "ipv4:b"); any other target (one address, a DNS name) as it is."""
    scheme, colon, addresses = target.partition(":")
    if colon and scheme in ("ipv4", "ipv6") and "," in addresses:
        return [f"{scheme}:{address}" for address in addresses.split(",") if address]
    return [target]


# After its call broke, an address gets new streams only when no other address can.
_BROKEN_PAUSE_S = 1.0


class _Lane:
    """One provider address: its channel and its current Multiplex call."""

    __slots__ = ("broken_at", "channel", "session")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.session: _Session | None = None
        self.broken_at = float("-inf")

    def live(self) -> bool:
        """Has a call that is open and takes new streams."""
        session = self.session
        return session is not None and not session.closed and not session.retired


class MultiplexedStreams:
    """Provider streams as frames on long-lived Multiplex calls, one per provider address.

    Streams take the addresses in turn (a replica's share does not depend on which
    connection happened to be ready first, as it would with one round-robin channel).
    A broken call fails its streams with NETWORK_FAILURE, as a broken Stream call would;
    its address gets new streams only when no other can for a second, and then through a
    new call. A provider without Multiplex (UNIMPLEMENTED: an older replica) turns this
    off: streams then go as Stream calls through `fallback`.
    """

    def __init__(
        self,
        channels: Sequence[grpc.aio.Channel],
        settings: MultiplexSettings,
        *,
        fallback: ProviderStreams,
    ) -> None:
        self._lanes = [_Lane(channel) for channel in channels]  # owned: closed by close()
        self._settings = settings
        first = channels[0]
        self._spans = first.client_spans if isinstance(first, TracedChannel) else None
        self._turn = 0
        self._retired: set[_Session] = set()
        self._fallback = fallback
        self._unsupported = False

    def open(
        self, request: provider_pb2.StreamRequest, *, timeout: float, metadata: Metadata
    ) -> ProviderCall:
        """Start one stream on the next address's Multiplex call."""
        if self._unsupported:
            return self._fallback.open(request, timeout=timeout, metadata=metadata)
        return self._session().open(request, timeout, metadata)

    def _session(self) -> _Session:
        lanes = self._lanes
        count = len(lanes)
        self._turn = (self._turn + 1) % count
        now = time.monotonic()
        # The next address in turn; one whose call broke within the pause only when
        # no other is left.
        for step in range(count - 1):
            lane = lanes[(self._turn + step) % count]
            if lane.live() or now - lane.broken_at >= _BROKEN_PAUSE_S:
                return self._take(lane, now)
        return self._take(lanes[(self._turn + count - 1) % count], now)

    def _take(self, lane: _Lane, now: float) -> _Session:
        """The lane's call, or a new one if it has none, it ended or it is too old."""
        session = lane.session
        if session is not None and lane.live():
            if now - session.started <= self._settings.max_age_s:
                return session
            session.retire()  # closes once its last stream ends
            self._retired.add(session)
        return self._replace(lane)

    def _replace(self, lane: _Lane) -> _Session:
        self._retired = {s for s in self._retired if not s.closed}

        def broken(code: grpc.StatusCode) -> None:
            if code == grpc.StatusCode.UNIMPLEMENTED and not self._unsupported:
                log.warning("the provider has no Multiplex method; using Stream calls")
                self._unsupported = True
            elif code != grpc.StatusCode.OK:
                lane.broken_at = time.monotonic()

        lane.session = _Session(lane.channel, self._spans, self._settings.window_bytes, broken)
        return lane.session

    async def close(self) -> None:
        """Close every Multiplex call (their streams fail as a closed channel's would)."""
        sessions = [lane.session for lane in self._lanes if lane.session is not None]
        await asyncio.gather(
            *(s.aclose() for s in (*sessions, *self._retired)), return_exceptions=True
        )
        for lane in self._lanes:
            await lane.channel.close()
