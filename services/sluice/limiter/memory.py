"""The embedded backend: limit state in a bounded in-process map.

Exact for one replica: asyncio runs one decision at a time, and a decision checks every
limit before it commits any, so a refusal consumes nothing.

Each map (limit states, reservations, currency spend) is bounded by entries and by
estimated bytes: keys carry caller-chosen values (a `user` as long as a header allows),
so a count alone does not bound memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

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

V = TypeVar("V")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# An entry besides its key's characters: the dict slot, the str, the value object.
_ENTRY_OVERHEAD_BYTES = 200


class _SizedLru(OrderedDict[str, V]):
    """Least recently used first out, beyond `max_entries` or `max_bytes` (estimated).

    A mapping (reads are plain dict reads); `put`, `take` and `pop_oldest` keep the
    size accounting.
    """

    def __init__(self, max_entries: int = 100_000, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        self._max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self._sizes: dict[str, int] = {}

    def put(self, key: str, value: V, extra_bytes: int = 0) -> None:
        size = _ENTRY_OVERHEAD_BYTES + len(key) + extra_bytes
        self.bytes_used += size - self._sizes.get(key, 0)
        self._sizes[key] = size
        self[key] = value
        self.move_to_end(key)
        while len(self) > 1 and (len(self) > self._max_entries or self.bytes_used > self.max_bytes):
            self.pop_oldest()

    def take(self, key: str) -> V | None:
        if key not in self:
            return None
        self.bytes_used -= self._sizes.pop(key, 0)
        return super().pop(key)

    def oldest(self) -> V | None:
        return next(iter(self.values()), None)

    def pop_oldest(self) -> None:
        key, _ = self.popitem(last=False)
        self.bytes_used -= self._sizes.pop(key, 0)

    def clear(self) -> None:
        super().clear()
        self._sizes.clear()
        self.bytes_used = 0


@dataclass(frozen=True, slots=True)
class _Reservation:
    expires: float
    reserved_at: float
    tokens: float
    limits: list[tuple[str, Algorithm]]


class MemoryBackend:
    """A bounded map of key -> algorithm state, least recently used forgotten first."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_keys: int = 100_000,
        reservation_ttl_s: float = 3600.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._clock = clock
        self._reservation_ttl_s = reservation_ttl_s
        self.max_bytes = max_bytes
        # Half for the limit states, a quarter each for reservations and spend.
        self._states: _SizedLru[State] = _SizedLru(max_keys, max_bytes // 2)
        self._reservations: _SizedLru[_Reservation] = _SizedLru(max_keys, max_bytes // 4)
        self._spend: _SizedLru[tuple[int, float]] = _SizedLru(max_keys, max_bytes // 4)
        """Currency spend per key: (period index, amount)."""

    @property
    def bytes_used(self) -> int:
        """Estimated bytes of every map."""
        return self._states.bytes_used + self._reservations.bytes_used + self._spend.bytes_used

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
        reservation = self._reservations.take(reservation_id)
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
        self._spend.put(key, (period, total))
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
        self._states.put(key, state)

    def _remember(self, reservation_id: str, reservation: _Reservation) -> None:
        self._expire_reservations(reservation.reserved_at)
        keys = sum(len(key) + _ENTRY_OVERHEAD_BYTES for key, _ in reservation.limits)
        self._reservations.put(reservation_id, reservation, keys)

    def _expire_reservations(self, now: float) -> None:
        while (oldest := self._reservations.oldest()) is not None and oldest.expires <= now:
            self._reservations.pop_oldest()
