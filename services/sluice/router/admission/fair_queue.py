"""The queue of one back end: by class, then weighted-fair across tenants."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from sluice.router.admission.classes import CLASSES, RANK, PriorityClass


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
