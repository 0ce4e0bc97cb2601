"""Admission in front of back-end capacity: priority classes, a weighted-fair queue
across tenants, deadline scheduling, adaptive concurrency and load shedding.

How a request gets to run (RouterServicer._generate, after the limiter admitted it):

1. Shedding: while CPU or memory is past its threshold, classes are refused from the
   bottom: `background` at the first level, `normal` at the second; `premium` and
   `critical` only past the hard level (SPEC §2.1 SERVICE_UNAVAILABLE, retry shortly).
2. If the back end has a free slot under its *adaptive* concurrency limit and nobody
   waits, the request starts at once.
3. Otherwise it queues. The highest class waiting goes next; within a class, tenants
   share capacity by start-time fair queueing (weighted; the tenant with the smallest
   start tag goes next, then arrival order). So class wins across tenants and fairness
   decides within a class: a tenant sending 10x more waits behind its own backlog in
   its class, not in front of others, and under overload the lowest class anywhere
   waits, and is refused, first. When the queue is full, an arriving request of a
   higher class takes the place of the lowest-class waiter (which is refused, shed),
   rather than being refused itself.
4. Deadlines: a request whose estimated wait (the work ahead of it divided by the
   limit, times the observed service time) ends after its deadline is refused at once
   with DEADLINE_EXCEEDED; one whose deadline passes while queued is removed and
   refused the same way.
5. The concurrency limit per back end adapts (AIMD on time-to-first-token): while the
   back end answers within the target it grows by 1/limit per completion; when it
   slows down past the target the limit is cut by `decrease_factor`. So overload shows
   up as queueing in front of the back end, not as timeouts inside it. The resilience
   bulkhead per back end (core/resilience) stays the hard capacity guard behind this.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field

from sluice.core.clock import Clock
from sluice.core.errors import DeadlineExceededError, ServiceUnavailableError
from sluice.core.telemetry.spans import RequestSpans

PriorityClass = Literal["premium", "critical", "normal", "background"]
CLASSES: tuple[PriorityClass, ...] = ("premium", "critical", "normal", "background")
RANK: dict[str, int] = {name: rank for rank, name in enumerate(CLASSES)}
PRIORITY_HEADER = "x-sluice-priority"
_E = TypeVar("_E")
# How a queue wait may end by design (its span records the outcome, not a failure).
_DEADLINE_SLACK_S = 0.01
_WAIT_REFUSALS: dict[type[BaseException], str] = {
    DeadlineExceededError: "deadline",
    ServiceUnavailableError: "shed",
}


class AdaptiveSettings(BaseModel):
    """The AIMD concurrency limit per back end."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    initial_limit: int = Field(256, ge=1)
    """Concurrent streams allowed per back end at start."""
    min_limit: int = Field(4, ge=1)
    """Floor of the adaptive limit."""
    max_limit: int = Field(256, ge=1)
    """Ceiling of the adaptive limit."""
    target_ttft_ms: float = Field(2000.0, gt=0.0)
    """Time to first token the back end should stay within; slower answers cut the limit."""
    decrease_factor: float = Field(0.9, gt=0.0, lt=1.0)
    """Multiplicative decrease on a slow answer."""


class SheddingSettings(BaseModel):
    """Load-based shedding thresholds, as fractions 0..1 of the router's CPU (its one
    event-loop core) and of its memory (RSS over `resilience.memory_limit_mb`, or the
    host's memory in use when that is 0)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = False
    """Shed by class while the router is overloaded (off by default: turn on where the
    router has its own CPU; on a shared machine other processes' load does not count)."""
    background_at: float = Field(0.80, gt=0.0, le=1.0)
    """Load at which `background` requests are refused."""
    normal_at: float = Field(0.90, gt=0.0, le=1.0)
    """Load at which `normal` requests are refused too."""
    all_at: float = Field(0.98, gt=0.0, le=1.0)
    """Load at which `premium` and `critical` are refused too."""
    sample_interval_ms: float = Field(250.0, ge=10.0)
    """How often CPU and memory are sampled."""


class ScheduleSettings(BaseModel):
    """A daily window (UTC) during which the concurrency limit per back end is capped."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    """Start of the window, HH:MM UTC (inclusive)."""
    end: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    """End of the window, HH:MM UTC (exclusive); before `start` wraps past midnight."""
    max_limit: int = Field(ge=1)
    """Concurrency cap per back end while the window is active."""

    def minutes(self) -> tuple[int, int]:
        """(start, end) as minutes after midnight."""
        start_h, start_m = self.start.split(":")
        end_h, end_m = self.end.split(":")
        return int(start_h) * 60 + int(start_m), int(end_h) * 60 + int(end_m)

    def active(self, minute_of_day: int) -> bool:
        """Whether the window covers this minute of the day."""
        start, end = self.minutes()
        if start <= end:
            return start <= minute_of_day < end
        return minute_of_day >= start or minute_of_day < end


class AdmissionSettings(BaseModel):
    """Admission in front of back-end capacity."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Queue and schedule requests per back end (off: straight to the fallback chain)."""
    max_queue: int = Field(1024, ge=0)
    """Requests that may wait per back end; beyond, SERVICE_UNAVAILABLE at once."""
    tenant_weights: dict[str, float] = Field(default_factory=dict)
    """Relative share of capacity per tenant within a class (default 1)."""
    adaptive: AdaptiveSettings = AdaptiveSettings()
    """The adaptive concurrency limit."""
    shedding: SheddingSettings = SheddingSettings()
    """Load-based shedding."""
    schedules: list[ScheduleSettings] = Field(default_factory=list)
    """Time-of-day caps on the concurrency limit (the smallest active cap applies), e.g.
    fewer slots during a nightly batch window that shares the back ends."""


def _as_class(name: str) -> PriorityClass | None:
    for known in CLASSES:
        if name == known:
            return known
    return None


def request_class(tier: str, metadata: Sequence[tuple[str, str | bytes]]) -> PriorityClass:
    """The key's tier, lowered (never raised) by an `x-sluice-priority` header."""
    base = _as_class(tier) or "normal"
    for key, value in metadata:
        if key == PRIORITY_HEADER:
            asked = _as_class((value.decode() if isinstance(value, bytes) else value).strip())
            if asked is not None and RANK[asked] > RANK[base]:
                return asked
    return base


class Aimd:
    """Additive-increase / multiplicative-decrease concurrency limit."""

    def __init__(self, settings: AdaptiveSettings) -> None:
        self._settings = settings
        self._limit = float(
            min(max(settings.initial_limit, settings.min_limit), settings.max_limit)
        )

    @property
    def limit(self) -> int:
        """The current whole limit."""
        return max(self._settings.min_limit, int(self._limit))

    def observe(self, latency_s: float, *, overloaded: bool = False) -> None:
        """Feed one completion's time to first token (or an overload signal)."""
        s = self._settings
        if overloaded or latency_s * 1000.0 > s.target_ttft_ms:
            self._limit = max(float(s.min_limit), self._limit * s.decrease_factor)
        else:
            self._limit = min(float(s.max_limit), self._limit + 1.0 / max(self._limit, 1.0))


@dataclass(eq=False)
class _Waiter:
    rank: int
    tenant: str
    klass: str
    future: asyncio.Future[None]
    cancelled: bool = False


@dataclass
class _Flow:
    """One tenant's waiters of one class, in arrival order."""

    waiting: deque[_Waiter] = field(default_factory=deque)
    live: int = 0
    start: float = 0.0
    """Start tag of the flow's next request (start-time fair queueing)."""


@dataclass
class _Band:
    """The waiters of one class: one flow per tenant, served weighted-fair."""

    flows: dict[str, _Flow] = field(default_factory=dict)
    live: int = 0
    virtual: float = 0.0


class FairQueue:
    """Ordered by class; weighted-fair across tenants within a class.

    The policy (docs/resilience.md, "Admission"): class wins across tenants, fairness
    decides within a class. The highest class with a waiter goes next, so under
    overload the lowest class anywhere waits (and is shed) first: a light tenant's
    background work does not run while a heavy tenant's normal work is refused. Within
    one class, start-time fair queueing with one flow per tenant: the tenant with the
    smallest start tag goes next and its tag advances by 1/weight; a tenant that was
    idle starts at the current virtual time (no credit for idleness). So a tenant
    sending 10x more only lengthens its own wait within its class.
    """

    def __init__(self, weights: dict[str, float]) -> None:
        self._weights = weights
        self._bands = [_Band() for _ in CLASSES]
        self._live = 0
        self.by_class: dict[str, int] = dict.fromkeys(CLASSES, 0)

    def __len__(self) -> int:
        return self._live

    def push(self, tenant: str, klass: PriorityClass, future: asyncio.Future[None]) -> _Waiter:
        """Enqueue; returns the waiter (to cancel it)."""
        rank = RANK[klass]
        band = self._bands[rank]
        flow = band.flows.get(tenant)
        if flow is None:
            flow = band.flows[tenant] = _Flow(start=band.virtual)
        elif not flow.live:
            flow.start = max(flow.start, band.virtual)
        waiter = _Waiter(rank, tenant, klass, future)
        flow.waiting.append(waiter)
        flow.live += 1
        band.live += 1
        self._live += 1
        self.by_class[klass] += 1
        return waiter

    def ahead_of(self, tenant: str, klass: PriorityClass) -> int:
        """Waiters that would be served before a new request (an estimate): every
        waiter of a higher class, plus the tenant's own waiters of its class
        interleaved with every other tenant's turns in that class."""
        rank = RANK[klass]
        higher = sum(band.live for band in self._bands[:rank])
        band = self._bands[rank]
        flow = band.flows.get(tenant)
        own = flow.live if flow else 0
        active = sum(1 for f in band.flows.values() if f.live) - (1 if own else 0)
        others = band.live - own
        return higher + own + min(others, (own + 1) * max(active, 0))

    def _forget(self, waiter: _Waiter) -> None:
        band = self._bands[waiter.rank]
        waiter.cancelled = True
        band.flows[waiter.tenant].live -= 1
        band.live -= 1
        self._live -= 1
        self.by_class[waiter.klass] -= 1

    def cancel(self, waiter: _Waiter) -> None:
        """Remove a waiter (its deadline passed, its caller left, or it was shed)."""
        if not waiter.cancelled:
            self._forget(waiter)

    def lowest(self) -> _Waiter | None:
        """The waiter to shed first: of the lowest class waiting, the newest of the
        tenant with the most waiters in that class (None when empty)."""
        for band in reversed(self._bands):
            if not band.live:
                continue
            flow = max((f for f in band.flows.values() if f.live), key=lambda f: (f.live, f.start))
            for waiter in reversed(flow.waiting):
                if not waiter.cancelled:
                    return waiter
        return None

    def pop(self) -> _Waiter | None:
        """The next waiter to run, or None."""
        for band in self._bands:
            if not band.live:
                continue
            tenant, flow = min(
                ((name, f) for name, f in band.flows.items() if f.live),
                key=lambda item: item[1].start,
            )
            while flow.waiting[0].cancelled:
                flow.waiting.popleft()
            waiter = flow.waiting.popleft()
            self._forget(waiter)
            band.virtual = max(band.virtual, flow.start)
            flow.start += 1.0 / self._weights.get(tenant, 1.0)
            if not band.live:
                band.flows.clear()  # idle: nobody keeps credit or debt
                band.virtual = 0.0
            return waiter
        return None


class LatencyWindow:
    """The last N latencies, for p95 (an autoscaling signal)."""

    def __init__(self, size: int = 512) -> None:
        self._recent: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        """Record one latency in seconds."""
        self._recent.append(value)

    def quantile(self, q: float) -> float:
        """The q-quantile of the window (0 when empty)."""
        if not self._recent:
            return 0.0
        ordered = sorted(self._recent)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    def mean(self) -> float:
        """Mean of the window (0 when empty)."""
        return sum(self._recent) / len(self._recent) if self._recent else 0.0


class LoadSampler:
    """CPU and memory load as fractions 0..1, sampled at most every interval."""

    def __init__(
        self,
        clock: Clock,
        interval_s: float,
        cpu: Callable[[], float] | None = None,
        memory: Callable[[], float] | None = None,
        memory_limit_bytes: int = 0,
    ) -> None:
        import psutil  # noqa: PLC0415 - only the router samples load

        process = psutil.Process()
        process.cpu_percent(None)  # the first call only starts the measurement

        def own_memory() -> float:
            if memory_limit_bytes:
                return float(process.memory_info().rss / memory_limit_bytes)
            return float(psutil.virtual_memory().percent / 100.0)

        self._clock = clock
        self._interval = interval_s
        # This process's CPU as a share of one core: the event loop runs on one.
        self._cpu = cpu or (lambda: min(1.0, process.cpu_percent(None) / 100.0))
        self._memory = memory or own_memory
        self._at = float("-inf")
        self.cpu = 0.0
        self.memory = 0.0

    def sample(self) -> float:
        """max(CPU, memory) load, refreshed when older than the interval."""
        now = self._clock.monotonic()
        if now - self._at >= self._interval:
            self._at = now
            self.cpu = self._cpu()
            self.memory = self._memory()
        return max(self.cpu, self.memory)


class AdmissionMetrics:
    """Queue depth, wait, in-flight, limits, load and p95: also the autoscaling signals."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "sluice_router_queue_depth",
            "Requests waiting for back-end capacity, per back end and class.",
            ["backend", "priority"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "sluice_router_queue_wait_seconds",
            "Time requests waited for back-end capacity, per class.",
            ["priority"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.in_flight = Gauge(
            "sluice_router_admitted_in_flight",
            "Requests holding back-end capacity, per back end.",
            ["backend"],
            registry=registry,
        )
        self.limit = Gauge(
            "sluice_router_concurrency_limit",
            "The adaptive concurrency limit per back end.",
            ["backend"],
            registry=registry,
        )
        self.refused = Counter(
            "sluice_router_admission_refused",
            "Requests refused by admission, by class and reason (shed, deadline, queue_full).",
            ["priority", "reason"],
            registry=registry,
        )
        self.cpu = Gauge("sluice_router_cpu_load", "Host CPU load (0..1).", registry=registry)
        self.memory = Gauge(
            "sluice_router_memory_load",
            "Memory load: RSS over resilience.memory_limit_mb (above 1 past it), "
            "else host memory in use.",
            registry=registry,
        )
        self.ttft_p95 = Gauge(
            "sluice_router_ttft_p95_seconds",
            "p95 time to first token over the last 512 admitted requests.",
            registry=registry,
        )


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
        limit = gate.aimd.limit
        if self._settings.schedules:
            minute = int(self._clock.wall() // 60) % (24 * 60)
            caps = [w.max_limit for w in self._settings.schedules if w.active(minute)]
            if caps:
                limit = min(limit, *caps)
        return limit

    def gate(self, backend: str) -> BackendGate:
        """The gate of a back end (created on first use)."""
        found = self._gates.get(backend)
        if found is None:
            found = self._gates[backend] = BackendGate(backend, self._settings)
            self.metrics.limit.labels(backend).set(self.limit(found))
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
        return ahead / self.limit(gate) * gate.service.mean()

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
        """Give the capacity back; the ticket's first token feeds the adaptive limit."""
        backend = ticket.backend
        gate = self.gate(backend)
        gate.in_flight -= 1
        now = self._clock.monotonic()
        gate.service.add(now - ticket.started)
        if ticket.first_token_at is not None:
            ttft = ticket.first_token_at - ticket.started
            gate.aimd.observe(ttft)
            self._ttft.add(ttft)
        self.metrics.limit.labels(backend).set(self.limit(gate))
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
        """Record that the ticket's stream produced its first token."""
        if ticket.first_token_at is None:
            ticket.first_token_at = self._clock.monotonic()


__all__ = [
    "CLASSES",
    "PRIORITY_HEADER",
    "Admission",
    "AdmissionSettings",
    "Aimd",
    "FairQueue",
    "LatencyWindow",
    "LoadSampler",
    "ScheduleSettings",
    "Ticket",
    "request_class",
]
