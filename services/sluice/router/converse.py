"""Converse: a conversation on one bidirectional stream (gRPC, or WebSocket via the bridge).

The client sends prompts (turns with client-chosen ids) and cancels; each turn runs the
router's own Generate pipeline (auth, validation, limiter, admission, fallback chain)
in a task of its own, and its events go out tagged with the turn id. Turns run one at
a time: a prompt that arrives while a turn runs is refused with an error event for
the new turn (the running one goes on). Every turn ends with exactly one `complete` or
`error` event; a cancelled turn ends with an `error` whose reason and code are
``CANCELLED``.

History: a completed turn's messages plus its answer are kept (bounded by
``converse.max_history_turns`` and ``max_history_chars``, oldest evicted first) so a
later prompt can continue it with ``follows_turn_id``. The combined request is then
validated as any other (so ``max_messages`` and ``max_prompt_chars`` still apply).

Cancel path: the reader receives the cancel, cancels the turn's task and the turn's
provider calls (router/relay.py `UPSTREAM_CALLS`); closing the pipeline's generator
cancels the provider call at once (router/attempts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter

from sluice.common.v1 import common_pb2
from sluice.core.errors import (
    FieldViolation,
    InternalError,
    InvalidInputError,
    MissingParameterError,
    SluiceError,
)
from sluice.core.grpcx.call_context import CallContext
from sluice.core.grpcx.request_context import new_request_id, request_id_var
from sluice.router import relay
from sluice.router.pipeline import Pipeline
from sluice.router.provider_streams import ProviderCall
from sluice.router.settings import ConverseSettings
from sluice.router.stream_caps import StreamSlot
from sluice.router.v1 import router_pb2

log = logging.getLogger("sluice.router.converse")

MAX_TURN_ID = 64
_QUEUE_SIZE = 64
_DRAIN_S = 5.0  # events buffered towards a slow client before the turn waits


class ConverseMetrics:
    """Turns by outcome and cancels that stopped a running turn."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.turns = Counter(
            "sluice_router_converse_turns",
            "Converse turns by outcome (completed, failed, cancelled, abandoned, rejected).",
            ["outcome"],
            registry=registry,
        )
        self.cancels = Counter(
            "sluice_router_converse_cancels",
            "Converse cancels that stopped a running turn.",
            registry=registry,
        )


def error_event(
    turn_id: str, error: SluiceError, *, sequence: int = 0, output_tokens: int = 0
) -> router_pb2.ConverseEvent:
    """A turn's final `error` event for a Sluice error."""
    return router_pb2.ConverseEvent(
        turn_id=turn_id, event=relay.error_event(error, output_tokens, sequence=sequence)
    )


def _cancelled_event(turn_id: str, sequence: int, output_tokens: int) -> router_pb2.ConverseEvent:
    return router_pb2.ConverseEvent(
        turn_id=turn_id, event=relay.cancelled_event(output_tokens, sequence=sequence)
    )


def _invalid(message: str, field: str, cause: str) -> InvalidInputError:
    return InvalidInputError(
        message, metadata={"cause": cause}, field_violations=[FieldViolation(field, message)]
    )


def _check_turn_id(turn_id: str, field: str) -> None:
    if not turn_id:
        raise MissingParameterError(
            f"{field} is required", field_violations=[FieldViolation(field, "required")]
        )
    if len(turn_id) > MAX_TURN_ID or not turn_id.isprintable():
        raise _invalid(
            f"{field} must be 1..{MAX_TURN_ID} printable characters", field, "bad_turn_id"
        )


class _History:
    """Completed turns' conversations, bounded by count and total characters."""

    def __init__(self, max_turns: int, max_chars: int) -> None:
        self._max_turns = max_turns
        self._max_chars = max_chars
        self._turns: OrderedDict[str, tuple[tuple[common_pb2.Message, ...], int]] = OrderedDict()
        self._chars = 0

    def get(self, turn_id: str) -> tuple[common_pb2.Message, ...] | None:
        found = self._turns.get(turn_id)
        return found[0] if found is not None else None

    def add(self, turn_id: str, messages: tuple[common_pb2.Message, ...]) -> None:
        chars = sum(len(m.content) for m in messages)
        if self._max_turns == 0 or chars > self._max_chars:
            return
        self._turns[turn_id] = (messages, chars)
        self._chars += chars
        while len(self._turns) > self._max_turns or self._chars > self._max_chars:
            _, (_, evicted) = self._turns.popitem(last=False)
            self._chars -= evicted

    def __len__(self) -> int:
        return len(self._turns)


class _Running:
    """The turn in progress."""

    __slots__ = ("abandoned", "calls", "cancelled", "task", "turn_id")

    def __init__(self, turn_id: str) -> None:
        self.turn_id = turn_id
        self.task: asyncio.Task[None]
        self.cancelled = False
        self.abandoned = False
        self.calls: set[ProviderCall] = set()

    def stop(self, *, by_client: bool = False) -> None:
        """Cancel the turn's provider calls and its task."""
        if by_client:
            self.cancelled = True
        else:
            self.abandoned = True
        for call in list(self.calls):
            call.cancel()
        self.task.cancel()


class Conversation:
    """One Converse stream's state: the running turn, the history, the outgoing events.

    A driver (the gRPC method or the WebSocket bridge) feeds client messages to
    `submit` and reports unreadable ones with `reject`, calls `close_input` when the
    client stops sending, and sends what `events()` yields; `aclose` stops everything.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        settings: ConverseSettings,
        metrics: ConverseMetrics,
        call: CallContext,
        *,
        tracer: trace.Tracer | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        slot: StreamSlot | None = None,
    ) -> None:
        self._monotonic = monotonic
        self._slot = slot
        self.last_turn_end = 0.0
        """When the last turn ended (monotonic seconds), for idle timeouts."""
        self._pipeline = pipeline
        self._settings = settings
        self._metrics = metrics
        self._call = call
        self._tracer = tracer
        self._history = _History(settings.max_history_turns, settings.max_history_chars)
        self._seen: set[str] = set()
        self._running: _Running | None = None
        self._draining: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[router_pb2.ConverseEvent | None] = asyncio.Queue(_QUEUE_SIZE)
        self._input_closed = False

    @property
    def busy(self) -> bool:
        """Whether a turn is running."""
        return self._running is not None

    # -- client messages ---------------------------------------------------------------

    async def submit(self, request: router_pb2.ConverseRequest) -> None:
        """Act on one client message: start a turn, cancel one, or answer with an error."""
        action = request.WhichOneof("action")
        if action == "prompt":
            await self._prompt(request.prompt)
        elif action == "cancel":
            await self._cancel(request.cancel.turn_id)
        else:
            await self.reject(
                "",
                MissingParameterError(
                    "a message must set `prompt` or `cancel`",
                    field_violations=[FieldViolation("action", "required: prompt or cancel")],
                ),
            )

    async def reject(self, turn_id: str, error: SluiceError) -> None:
        """Answer a client message that cannot be served with an error event."""
        self._metrics.turns.labels("rejected").inc()
        await self._queue.put(error_event(turn_id, error))

    async def _prompt(self, prompt: router_pb2.ConversePrompt) -> None:
        turn_id = prompt.turn_id
        try:
            _check_turn_id(turn_id, "prompt.turn_id")
            if turn_id in self._seen:
                raise _invalid(
                    f"turn id '{turn_id}' was already used on this stream",
                    "prompt.turn_id",
                    "duplicate_turn_id",
                )
            if len(self._seen) >= self._settings.max_turns:
                raise _invalid(
                    f"this stream used its {self._settings.max_turns} turns; open a new one",
                    "prompt.turn_id",
                    "too_many_turns",
                )
            if self._running is not None:
                raise _invalid(
                    f"turn '{self._running.turn_id}' is still running; wait for its final "
                    "event or cancel it",
                    "prompt",
                    "turn_in_progress",
                )
            request = router_pb2.GenerateRequest()
            request.CopyFrom(prompt.request)
            if prompt.follows_turn_id:
                earlier = self._history.get(prompt.follows_turn_id)
                if earlier is None:
                    raise _invalid(
                        f"follows_turn_id '{prompt.follows_turn_id[:MAX_TURN_ID]}' names no "
                        "completed turn in this stream's history",
                        "prompt.follows_turn_id",
                        "unknown_turn",
                    )
                del request.messages[:]
                request.messages.extend(earlier)
                request.messages.extend(prompt.request.messages)
        except SluiceError as error:
            self._remember(turn_id)
            await self.reject(turn_id[:MAX_TURN_ID], error)
            return
        self._seen.add(turn_id)
        running = _Running(turn_id)
        running.task = asyncio.create_task(self._turn(running, request), name=f"converse-{turn_id}")
        self._running = running

    async def _cancel(self, turn_id: str) -> None:
        running = self._running
        if running is not None and running.turn_id == turn_id:
            if not running.cancelled:
                running.stop(by_client=True)
                self._metrics.cancels.inc()
            return
        if turn_id in self._seen:
            return  # already ended: its final event was (or is being) sent
        try:
            _check_turn_id(turn_id, "cancel.turn_id")
            raise _invalid(
                f"cancel names turn '{turn_id}', which this stream never started",
                "cancel.turn_id",
                "unknown_turn",
            )
        except SluiceError as error:
            self._remember(turn_id)  # so the id cannot get a second final event
            await self.reject(turn_id[:MAX_TURN_ID], error)

    def _remember(self, turn_id: str) -> None:
        """Mark a refused id as used (bounded, like the turns themselves)."""
        if turn_id and len(turn_id) <= MAX_TURN_ID and len(self._seen) < self._settings.max_turns:
            self._seen.add(turn_id)

    def close_input(self, *, cancel_running: bool = False) -> None:
        """The client sends no more; the stream ends once the running turn has."""
        self._input_closed = True
        if cancel_running and self._running is not None:
            self._running.stop()
        if self._running is None:
            self._wake()

    def _wake(self) -> None:
        # A full queue wakes `events()` anyway: it re-checks after every event.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    # -- outgoing events ---------------------------------------------------------------

    async def events(self) -> AsyncIterator[router_pb2.ConverseEvent]:
        """Every event of every turn, in order; ends when the input is closed and idle."""
        while True:
            if self._input_closed and self._running is None and self._queue.empty():
                return
            event = await self._queue.get()
            if event is not None:
                yield event

    async def aclose(self) -> None:
        """Cancel the running turn (its provider call with it) and wait for it."""
        self._input_closed = True
        try:
            running = self._running
            if running is not None:
                running.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await running.task
            # Turns that sent their final event are only finishing their bookkeeping
            # (cache, breaker, reconciliation): let them, within reason.
            if self._draining:
                _, late = await asyncio.wait(set(self._draining), timeout=_DRAIN_S)
                for task in late:
                    task.cancel()
        finally:
            if self._slot is not None:
                self._slot.release()  # the key's stream slot, held for the conversation

    # -- one turn ----------------------------------------------------------------------

    async def _turn(self, running: _Running, request: router_pb2.GenerateRequest) -> None:
        request_id_var.set(new_request_id())
        relay.UPSTREAM_CALLS.set(running.calls)
        span = (
            self._tracer.start_as_current_span(
                "converse turn",
                kind=trace.SpanKind.INTERNAL,
                attributes={"sluice.turn_id": running.turn_id, "model_name": request.model},
            )
            if self._tracer is not None
            else contextlib.nullcontext()
        )
        turn_id = running.turn_id
        sequence = 0
        output_tokens = 0
        answer: list[str] = []
        ended = False
        try:
            with span:
                try:
                    events = self._pipeline.generate(request, self._call, slot=self._slot)
                    async with contextlib.aclosing(events):
                        async for event in events:
                            if running.cancelled and not ended:
                                # The cancel may have been swallowed inside a gRPC read
                                # (grpc.aio can lose a task cancel there); act on it now.
                                raise asyncio.CancelledError
                            if ended:
                                continue  # the pipeline finishing its bookkeeping
                            sequence = event.sequence + 1
                            kind = event.WhichOneof("event")
                            if kind == "data":
                                output_tokens += event.data.token_count
                                answer.append(event.data.text)
                            tagged = router_pb2.ConverseEvent(turn_id=turn_id, event=event)
                            if kind == "complete":
                                ended = True
                                history = (
                                    *request.messages,
                                    common_pb2.Message(role="assistant", content="".join(answer)),
                                )
                                await self._end(running, "completed", tagged, history)
                            elif kind == "error":
                                ended = True
                                await self._end(running, "failed", tagged)
                            else:
                                await self._queue.put(tagged)
                    if not ended:
                        raise InternalError("the generation ended without a final event")
                except SluiceError as error:
                    if not ended:
                        ended = True
                        if running.cancelled:  # the provider call was cancelled under it
                            await self._end(
                                running,
                                "cancelled",
                                _cancelled_event(turn_id, sequence, output_tokens),
                            )
                        else:
                            await self._end(
                                running,
                                "failed",
                                error_event(
                                    turn_id, error, sequence=sequence, output_tokens=output_tokens
                                ),
                            )
                except asyncio.CancelledError:
                    if ended or not running.cancelled or running.abandoned:
                        if not ended:
                            self._release(running, "abandoned")
                        raise  # the stream itself is going away
                    # The client's cancel: the turn ends; the stream goes on.
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        current.uncancel()
                    ended = True
                    await self._end(
                        running, "cancelled", _cancelled_event(turn_id, sequence, output_tokens)
                    )
                except Exception as error:
                    log.error("converse turn failed", exc_info=error)
                    if not ended:
                        ended = True
                        await self._end(
                            running,
                            "failed",
                            error_event(
                                turn_id,
                                InternalError(
                                    "internal error; see the gateway logs for this request id"
                                ),
                                sequence=sequence,
                                output_tokens=output_tokens,
                            ),
                        )
        finally:
            self._draining.discard(running.task)
            if self._input_closed:
                self._wake()

    def _release(self, running: _Running, outcome: str) -> None:
        """The turn is over for the client: the stream takes the next prompt."""
        if self._running is running:
            self._running = None
            self._draining.add(running.task)
        self.last_turn_end = self._monotonic()
        self._metrics.turns.labels(outcome).inc()

    async def _end(
        self,
        running: _Running,
        outcome: str,
        final: router_pb2.ConverseEvent,
        history: tuple[common_pb2.Message, ...] = (),
    ) -> None:
        # Released before the final event goes out: a client that reacts to it with
        # its next prompt always finds the stream free.
        self._release(running, outcome)
        if history:
            self._history.add(running.turn_id, history)
        await self._queue.put(final)


class Converser:
    """Serves Converse streams: the gRPC method, and conversations for the WebSocket bridge."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: ConverseSettings,
        registry: CollectorRegistry,
        tracer: trace.Tracer | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.monotonic = monotonic
        self._pipeline = pipeline
        self._metrics = ConverseMetrics(registry)
        self._tracer = tracer

    def open(self, call: CallContext) -> Conversation:
        """A conversation whose turns run in `call`; raises SluiceError for a bad key or
        a key at its stream cap (the conversation holds one slot until `aclose`)."""
        principal = self._pipeline.authenticate(call.metadata)
        return Conversation(
            self._pipeline,
            self.settings,
            self._metrics,
            call,
            tracer=self._tracer,
            monotonic=self.monotonic,
            slot=self._pipeline.open_stream(principal),
        )

    async def rpc(
        self, requests: AsyncIterator[router_pb2.ConverseRequest], call: CallContext
    ) -> AsyncIterator[router_pb2.ConverseEvent]:
        """The gRPC `Converse` method: authenticate once, then serve turns until the client
        half-closes (the running turn finishes first) or goes away (it is cancelled)."""
        conversation = self.open(call)  # a bad key ends the call with UNAUTHENTICATED

        async def read() -> None:
            try:
                async for request in requests:
                    await conversation.submit(request)
            finally:
                conversation.close_input()

        reader = asyncio.create_task(read(), name="converse-reader")
        try:
            async for event in conversation.events():
                yield event
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await conversation.aclose()
