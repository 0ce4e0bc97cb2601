"""One destination's bounded buffer, batching and bounded retries, whatever its format.

Each destination gets its own Forwarder (buffer + task), so a dead or slow back end only
fills, and then drops from, its own buffer: it never stalls ingest or the other
destinations. What goes over the wire is a `Sink`'s business (otlp.py, zipkin.py,
azure_monitor.py); the Sink says which spans may be retried, and this module decides
when, how often (at most `max_attempts` per batch) and what is counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from sluice.telemetry.memory import span_bytes
from sluice.telemetry.sampling import StoredSpan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What became of one export attempt."""

    retry: list[StoredSpan] = field(default_factory=list)
    """Spans the receiver may accept later (e.g. HTTP 429/503, UNAVAILABLE, a timeout)."""
    failed: int = 0
    """Spans rejected for good (bad request, bad credentials...)."""
    retry_after_s: float | None = None
    """The receiver's own hint (Retry-After), capped by the forwarder."""
    error: str = ""
    """Why anything was not accepted, for the log."""


SENT = Outcome()


class Sink(Protocol):
    """Puts one batch of spans on the wire in one destination's format."""

    async def send(self, batch: list[StoredSpan]) -> Outcome:
        """One attempt; must return within its own timeout and never raise."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def backoff_delay(attempt: int, initial_s: float, max_s: float, jitter: float) -> float:
    """Delay before retry `attempt` (1-based): initial * 2^(attempt-1), capped, times jitter.

    `jitter` is a number in [0, 1): the delay is scaled into [50%, 100%) of the cap so
    many forwarders do not retry in lock step.
    """
    base = min(max_s, initial_s * 2.0 ** (attempt - 1))
    return float(base * (0.5 + jitter / 2))


class ForwardMetrics:
    """Counters shared by every forwarder, labelled by endpoint."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.spans = Counter(
            "sluice_telemetry_forwarded_spans",
            "Spans forwarded, by endpoint and result (sent; dropped: pushed out of a full "
            "buffer; failed: rejected or out of attempts).",
            ["endpoint", "result"],
            registry=registry,
        )
        self.buffered = Gauge(
            "sluice_telemetry_forward_buffer_spans",
            "Spans waiting to be forwarded, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        self.retries = Counter(
            "sluice_telemetry_forward_retries",
            "Export attempts retried, by endpoint.",
            ["endpoint"],
            registry=registry,
        )


class Forwarder:
    """Sends kept spans to one destination from a bounded buffer."""

    def __init__(
        self,
        endpoint: str,
        sink: Sink,
        *,
        metrics: ForwardMetrics,
        max_buffer_spans: int,
        max_buffer_bytes: int,
        max_batch_spans: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        max_attempts: int,
    ) -> None:
        self.endpoint = endpoint
        self._sink = sink
        self._buffer: deque[StoredSpan] = deque()
        self._max_buffer = max_buffer_spans
        self.max_bytes = max_buffer_bytes
        self.bytes_used = 0
        """Estimated bytes of the buffered spans (telemetry/memory.py)."""
        self._max_batch = max_batch_spans
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._max_attempts = max_attempts
        self._ready = asyncio.Event()
        self._sent = metrics.spans.labels(endpoint, "sent")
        self._dropped = metrics.spans.labels(endpoint, "dropped")
        self._failed = metrics.spans.labels(endpoint, "failed")
        self._retries = metrics.retries.labels(endpoint)
        self._gauge = metrics.buffered.labels(endpoint)
        self._task: asyncio.Task[None] | None = None
        self._random = random.Random()  # noqa: S311  # nosec B311

    def offer(self, spans: list[StoredSpan]) -> None:
        """Queue spans for sending; never blocks. The oldest are dropped beyond the bounds
        (spans, estimated bytes): a span may be large, so a count alone bounds nothing."""
        self._buffer.extend(spans)
        self.bytes_used += sum(map(span_bytes, spans))
        dropped = 0
        while self._buffer and (
            len(self._buffer) > self._max_buffer or self.bytes_used > self.max_bytes
        ):
            self.bytes_used -= span_bytes(self._buffer.popleft())
            dropped += 1
        if dropped:
            self._dropped.inc(dropped)
        self._gauge.set(len(self._buffer))
        self._ready.set()

    def start(self) -> None:
        """Start the sending task."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"forward-{self.endpoint}"
        )

    def _take(self) -> list[StoredSpan]:
        batch = [self._buffer.popleft() for _ in range(min(self._max_batch, len(self._buffer)))]
        self.bytes_used -= sum(map(span_bytes, batch))
        self._gauge.set(len(self._buffer))
        return batch

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            if not self._buffer:
                self._ready.clear()
                continue
            await self._send(self._take())

    async def _send(self, batch: list[StoredSpan]) -> bool:
        """Send with bounded retries; True when every span was accepted."""
        initial, cap = self._backoff
        for attempt in range(1, self._max_attempts + 1):
            try:
                outcome = await self._sink.send(batch)
            except Exception as err:  # a Sink bug must not kill forwarding for good
                log.exception("forwarding to %s raised", self.endpoint)
                outcome = Outcome(failed=len(batch), error=repr(err))
            self._sent.inc(len(batch) - len(outcome.retry) - outcome.failed)
            if outcome.failed:
                self._failed.inc(outcome.failed)
            if not outcome.retry:
                if outcome.failed:
                    log.warning(
                        "%s rejected %d spans: %s", self.endpoint, outcome.failed, outcome.error
                    )
                return not outcome.failed
            if attempt == self._max_attempts:
                log.warning(
                    "forwarding %d spans to %s failed after %d attempts: %s",
                    len(outcome.retry),
                    self.endpoint,
                    attempt,
                    outcome.error,
                )
                self._failed.inc(len(outcome.retry))
                return False
            self._retries.inc()
            delay = backoff_delay(attempt, initial, cap, self._random.random())
            if outcome.retry_after_s is not None:
                delay = max(delay, min(outcome.retry_after_s, cap))
            batch = outcome.retry
            await asyncio.sleep(delay)
        return False  # pragma: no cover - the loop always returns

    async def close(self, flush_timeout_s: float) -> None:
        """Try to send what is buffered within the timeout, then stop and close."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

        async def flush() -> None:
            while self._buffer:
                if not await self._send(self._take()):
                    return

        try:
            await asyncio.wait_for(flush(), timeout=flush_timeout_s)
        except TimeoutError:
            log.warning("%s: %d spans not forwarded at shutdown", self.endpoint, len(self._buffer))
        await self._sink.close()
