"""The embedded backend: limit state in a bounded in-process map.

Exact for one replica: asyncio runs one decision at a time, and a decision checks every
limit before it commits any, so a refusal consumes nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sluice.core.clock import Clock
from sluice.limiter.algorithms import (
    Algorithm,
    LeaseAsk,
    State,
    Verdict,
    grant_lease,
    leased_verdict,
)
from sluice.limiter.backend import Outcome, Reconciled, Spent
from sluice.limiter.policies import Check


@dataclass(frozen=True, slots=True)
class _Reservation:
    expires: float
    reserved_at: float
    tokens: float
    limits: list[tuple[str, Algorithm]]


class MemoryBackend:
    """A bounded map of key -> algorithm state, least recently used forgotten first."""

    def __init__(
        self, clock: Clock, *, max_keys: int = 100_000, reservation_ttl_s: float = 3600.0
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._reservation_ttl_s = reservation_ttl_s
        self._states: OrderedDict[str, State] = OrderedDict()
        self._reservations: OrderedDict[str, _Reservation] = OrderedDict()
        self._spend: OrderedDict[str, tuple[int, float]] = OrderedDict()
        """Currency spend per key: (period index, amount)."""

    @property
    def name(self) -> str:
        return "memory"

    def decide(
        self, checks: Sequence[Check], reservation_id: str, lease: LeaseAsk | None = None
    ) -> Outcome:
        """The synchronous decision (the async `acquire` wraps it)."""
        now = self._clock.monotonic()
        verdicts: list[Verdict] = []
        updates: list[State] = []
        for check in checks:
            verdict, state = check.algorithm.decide(self._states.get(check.key), now, check.cost)
            verdicts.append(verdict)
            updates.append(state)
        allowed = all(v.allowed for v in verdicts)
        if not allowed:
            return Outcome(False, verdicts)
        granted = None
        if lease is not None:
            algorithms = [check.algorithm for check in checks]
            granted = grant_lease(algorithms, verdicts, updates, now, lease)
            if granted is not None:
                verdicts = [
                    leased_verdict(a, v, granted.requests)
                    for a, v in zip(algorithms, verdicts, strict=True)
                ]
        tokens = 0.0
        limits: list[tuple[str, Algorithm]] = []
        for check, state in zip(checks, updates, strict=True):
            self._store(check.key, state)
            if check.unit == "tokens" and check.cost > 0:
                tokens = check.cost
                limits.append((check.key, check.algorithm))
        if limits:
            self._remember(
                reservation_id, _Reservation(now + self._reservation_ttl_s, now, tokens, limits)
            )
        return Outcome(True, verdicts, lease=granted)

    async def acquire(
        self, checks: Sequence[Check], reservation_id: str, lease: LeaseAsk | None = None
    ) -> Outcome:
        return self.decide(checks, reservation_id, lease)

    def settle(self, reservation_id: str, actual_tokens: float) -> Reconciled:
        """The synchronous reconciliation (the async `reconcile` wraps it)."""
        now = self._clock.monotonic()
        self._expire_reservations(now)
        reservation = self._reservations.pop(reservation_id, None)
        if reservation is None:
            return Reconciled(False)
        delta = actual_tokens - reservation.tokens
        if delta:
            for key, algorithm in reservation.limits:
                self._store(
                    key,
                    algorithm.adjust(self._states.get(key), now, delta, reservation.reserved_at),
                )
        return Reconciled(True, reservation.tokens)

    async def reconcile(self, reservation_id: str, actual_tokens: float) -> Reconciled:
        return self.settle(reservation_id, actual_tokens)

    def spent_now(self, key: str, period_s: float) -> Spent:
        """The synchronous `spent` (periods on the wall clock, aligned to the epoch)."""
        now = self._clock.wall()
        period = math.floor(now / period_s)
        held = self._spend.get(key)
        amount = held[1] if held is not None and held[0] == period else 0.0
        return Spent(amount, (period + 1) * period_s - now)

    def spend_now(self, key: str, period_s: float, amount: float) -> float:
        """The synchronous `spend`."""
        now = self._clock.wall()
        period = math.floor(now / period_s)
        held = self._spend.get(key)
        total = (held[1] if held is not None and held[0] == period else 0.0) + amount
        self._spend[key] = (period, total)
        self._spend.move_to_end(key)
        if len(self._spend) > self._max_keys:
            self._spend.popitem(last=False)
        return total

    async def spent(self, key: str, period_s: float) -> Spent:
        return self.spent_now(key, period_s)

    async def spend(self, key: str, period_s: float, amount: float) -> float:
        return self.spend_now(key, period_s, amount)

    async def close(self) -> None:
        self._spend.clear()
        self._states.clear()
        self._reservations.clear()

    def _store(self, key: str, state: State) -> None:
        self._states[key] = state
        self._states.move_to_end(key)
        if len(self._states) > self._max_keys:
            self._states.popitem(last=False)

    def _remember(self, reservation_id: str, reservation: _Reservation) -> None:
        self._expire_reservations(reservation.reserved_at)
        self._reservations[reservation_id] = reservation
        if len(self._reservations) > self._max_keys:
            self._reservations.popitem(last=False)

    def _expire_reservations(self, now: float) -> None:
        while self._reservations:
            oldest = next(iter(self._reservations.values()))
            if oldest.expires > now:
                break
            self._reservations.popitem(last=False)
