"""Admission for every back end: shedding, the wait in a gate's queue, release."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from sluice.core.clock import Clock
from sluice.core.errors import DeadlineExceededError, ServiceUnavailableError
from sluice.core.telemetry.spans import RequestSpans
from sluice.router.admission.aimd import Aimd
from sluice.router.admission.classes import RANK, PriorityClass
from sluice.router.admission.fair_queue import FairQueue
from sluice.router.admission.load import LatencyWindow, LoadSampler
from sluice.router.admission.metrics import AdmissionMetrics
from sluice.router.settings.admission import AdmissionSettings

_E = TypeVar("_E")
# How a queue wait may end by design (its span records the outcome, not a failure).
_DEADLINE_SLACK_S = 0.01
_WAIT_REFUSALS: dict[type[BaseException], str] = {
    DeadlineExceededError: "deadline",
    ServiceUnavailableError: "shed",
}


@dataclass
class Ticket:
    """An admitted request's hold on capacity: report its first token, then release."""

    backend: str
    klass: PriorityClass
    waited_s: float
    queue_depth: int
    started: float
    first_token_at: float | None = None


class BackendGate:
    """The queue and adaptive limit of one back end."""

    def __init__(self, name: str, settings: AdmissionSettings) -> None:
        self.name = name
        self.aimd = Aimd(settings.adaptive)
        self.queue = FairQueue(settings.tenant_weights)
        self.in_flight = 0
        self.service = LatencyWindow(128)
        """Recent whole-stream service times (for wait estimates)."""


class Admission:
    """Admission for all back ends (one gate per primary back end)."""

    def __init__(
        self,
        settings: AdmissionSettings,
        clock: Clock,
        registry: CollectorRegistry,
        sampler: LoadSampler | None = None,
        memory_limit_bytes: int = 0,
        *,
        spans: RequestSpans | None = None,
    ) -> None:
        self._settings = settings
        self._spans = spans or RequestSpans(None)
        self._clock = clock
        self._gates: dict[str, BackendGate] = {}
        self.metrics = AdmissionMetrics(registry)
        self._sampler = sampler or LoadSampler(
            clock,
            settings.shedding.sample_interval_ms / 1000.0,
            memory_limit_bytes=memory_limit_bytes,
        )
        self._ttft = LatencyWindow()
        # Sorted when scraped, not per request (a sort of 512 latencies per stream showed
        # in profiles).
        self.metrics.ttft_p95.set_function(lambda: self._ttft.quantile(0.95))

    def limit(self, gate: BackendGate) -> int:
        """The gate's concurrency limit now: adaptive, capped by active schedules."""
        return min(gate.aimd.limit, self._scheduled_cap())

    def gate(self, backend: str) -> BackendGate:
        """The gate of a back end (created on first use)."""
        found = self._gates.get(backend)
        if found is None:
            found = self._gates[backend] = BackendGate(backend, self._settings)
            self.metrics.limit.labels(backend).set(self.limit(found))
            self.metrics.ceiling.labels(backend).set(found.aimd.ceiling)
        return found

    def _shed(self, klass: PriorityClass) -> None:
        shedding = self._settings.shedding
        # Sampled whether or not shedding is on: CPU and memory are autoscaling signals.
        load = self._sampler.sample()
        self.metrics.cpu.set(self._sampler.cpu)
        self.metrics.memory.set(self._sampler.memory)
        if not shedding.enabled:
            return
        threshold = {
            "background": shedding.background_at,
            "normal": shedding.normal_at,
        }.get(klass, shedding.all_at)
        if load >= threshold:
            self.metrics.refused.labels(klass, "shed").inc()
            raise ServiceUnavailableError(
                f"the gateway is overloaded and sheds {klass} requests; retry shortly",
                metadata={"priority": klass, "load": f"{load:.2f}"},
                retry_after_s=1.0,
            )

    def _estimated_wait(self, gate: BackendGate, tenant: str, klass: PriorityClass) -> float:
        ahead = gate.queue.ahead_of(tenant, klass) + 1
        # While first tokens come in time the limit climbs towards its ceiling as the
        # queue drains, so the queue is estimated at that capacity, not today's limit
        # (thousands of streams opened at once would otherwise look hopeless).
        capacity = self.limit(gate)
        if gate.aimd.growing:
            capacity = max(capacity, min(gate.aimd.ceiling, self._scheduled_cap()))
        return ahead / capacity * gate.service.mean()

    def _scheduled_cap(self) -> int:
        """The smallest time-of-day cap active now (a very large number when none)."""
        caps = [w.max_limit for w in self._settings.schedules if w.active(self._minute())]
        return min(caps, default=2**31)

    def _minute(self) -> int:
        return int(self._clock.wall() // 60) % (24 * 60)

    def _refuse_deadline(self, klass: PriorityClass, why: str) -> DeadlineExceededError:
        self.metrics.refused.labels(klass, "deadline").inc()
        return DeadlineExceededError(why, metadata={"priority": klass})

    def _shed_lower(self, gate: BackendGate, klass: PriorityClass) -> bool:
        """Refuse the lowest-class waiter if it is of a lower class than `klass`, to
        make room for it; False when nobody waiting ranks below `klass`."""
        victim = gate.queue.lowest()
        if victim is None or victim.rank <= RANK[klass]:
            return False
        gate.queue.cancel(victim)
        self.metrics.queue_depth.labels(gate.name, victim.klass).dec()
        self.metrics.refused.labels(victim.klass, "shed").inc()
        if not victim.future.done():
            victim.future.set_exception(
                ServiceUnavailableError(
                    f"the back end's queue is full and sheds {victim.klass} requests first; "
                    "retry shortly",
                    metadata={"backend": gate.name, "priority": victim.klass},
                    retry_after_s=1.0,
                )
            )
        return True

    def _dispatch(self, gate: BackendGate) -> None:
        while gate.in_flight < self.limit(gate):
            waiter = gate.queue.pop()
            if waiter is None:
                break
            self.metrics.queue_depth.labels(gate.name, waiter.klass).dec()
            if waiter.future.done():
                continue
            gate.in_flight += 1
            waiter.future.set_result(None)
        self.metrics.in_flight.labels(gate.name).set(gate.in_flight)

    @contextlib.asynccontextmanager
    async def slot(
        self, backend: str, tenant: str, klass: PriorityClass, deadline: float
    ) -> AsyncIterator[Ticket]:
        """Hold capacity of `backend` for the block, after waiting in its queue."""
        ticket = await self.acquire(backend, tenant, klass, deadline)
        try:
            yield ticket
        finally:
            self.release(ticket)

    async def acquire(
        self, backend: str, tenant: str, klass: PriorityClass, deadline: float
    ) -> Ticket:
        """Wait for capacity of `backend`; pair with `release`."""
        self._shed(klass)
        gate = self.gate(backend)
        enqueued = self._clock.monotonic()
        depth = len(gate.queue)
        if gate.in_flight < self.limit(gate) and not depth:
            gate.in_flight += 1
            self.metrics.in_flight.labels(backend).set(gate.in_flight)
        else:
            budget = deadline - enqueued
            if self._estimated_wait(gate, tenant, klass) > budget:
                raise self._refuse_deadline(
                    klass, "the request cannot start before its deadline (queue too long)"
                )
            if depth >= self._settings.max_queue and not self._shed_lower(gate, klass):
                self.metrics.refused.labels(klass, "queue_full").inc()
                raise ServiceUnavailableError(
                    "the back end's queue is full; retry shortly",
                    metadata={"backend": backend, "priority": klass},
                    retry_after_s=1.0,
                )
            with self._spans.queue_wait(
                "admission",
                {
                    "sluice.priority": klass,
                    "sluice.queue.depth": depth,
                    "sluice.tenant": tenant,
                    "sluice.backend": backend,
                },
                refusals=_WAIT_REFUSALS,
            ) as span:
                await self._wait(gate, tenant, klass, deadline)
                span.set_attribute(
                    "sluice.queue.wait_ms",
                    round((self._clock.monotonic() - enqueued) * 1000.0, 3),
                )
        waited = self._clock.monotonic() - enqueued
        self.metrics.queue_wait.labels(klass).observe(waited)
        return Ticket(backend, klass, waited, depth, self._clock.monotonic())

    async def _wait(
        self, gate: BackendGate, tenant: str, klass: PriorityClass, deadline: float
    ) -> None:
        """Queue for a slot of `gate`: return holding it, or raise (deadline, shed)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = gate.queue.push(tenant, klass, future)
        self.metrics.queue_depth.labels(gate.name, klass).inc()
        try:
            budget = deadline - self._clock.monotonic()
            await asyncio.wait_for(asyncio.shield(future), timeout=max(budget, 0.0))
        except (TimeoutError, asyncio.CancelledError) as stop:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Admitted at the last moment: give the slot back.
                gate.in_flight -= 1
                self._dispatch(gate)
            elif not future.done():
                future.cancel()
                gate.queue.cancel(waiter)
                self.metrics.queue_depth.labels(gate.name, klass).dec()
            if isinstance(stop, TimeoutError):
                raise self._refuse_deadline(
                    klass, "the request's deadline passed while it waited for capacity"
                ) from None
            if self._clock.monotonic() >= deadline - _DEADLINE_SLACK_S:
                # gRPC cancelled the call at its deadline a moment before our own timer
                # fired: the same refusal, counted the same way.
                self.metrics.refused.labels(klass, "deadline").inc()
            raise

    def release(self, ticket: Ticket) -> None:
        """Give the capacity back (and start whoever waits next)."""
        backend = ticket.backend
        gate = self.gate(backend)
        gate.in_flight -= 1
        now = self._clock.monotonic()
        gate.service.add(now - ticket.started)
        self._dispatch(gate)

    async def run(
        self,
        events: AsyncIterator[_E],
        *,
        backend: str,
        tenant: str,
        klass: PriorityClass,
        deadline: float,
        is_first_token: Callable[[_E], bool],
    ) -> AsyncIterator[_E]:
        """Relay a stream once admitted, holding capacity until it ends; the current
        span gets the class, queue depth at arrival and wait."""
        # acquire/release rather than `async with slot()`: a generator's finally runs
        # however it is closed, while a context manager generator finalised by the loop
        # may already be closed itself.
        ticket = await self.acquire(backend, tenant, klass, deadline)
        try:
            span = trace.get_current_span()
            span.set_attribute("sluice.priority", klass)
            span.set_attribute("sluice.queue.depth", ticket.queue_depth)
            span.set_attribute("sluice.queue.wait_ms", round(ticket.waited_s * 1000.0, 3))
            async for event in events:
                if ticket.first_token_at is None and is_first_token(event):
                    self.first_token(ticket)
                yield event
        finally:
            self.release(ticket)
            # Close the inner stream now, in order, rather than leaving it to the loop's
            # finaliser (where its own context managers may be finalised first).
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    def first_token(self, ticket: Ticket) -> None:
        """Record that the ticket's stream produced its first token: its time to first
        token feeds the adaptive limit now, not when the (long) stream ends, and a limit
        that grew starts waiting requests at once."""
        if ticket.first_token_at is not None:
            return
        now = ticket.first_token_at = self._clock.monotonic()
        ttft = now - ticket.started
        self._ttft.add(ttft)
        gate = self.gate(ticket.backend)
        gate.aimd.observe(
            ttft, admitted_at=ticket.started, now=now, demand=gate.in_flight + len(gate.queue)
        )
        self.metrics.limit.labels(ticket.backend).set(self.limit(gate))
        if gate.queue:
            self._dispatch(gate)
