"""A shared backend that degrades to each replica's share of every limit.

While the shared store (Redis) is unreachable, each of `replicas` replicas decides
alone against 1/replicas of every limit, so together they stay within the limit. The
switch is announced (a gauge, a counter, a warning log, the health of the named service
`sluice.limiter.v1.LimiterService.store`, and `local_fallback` on every decision taken
locally); every `retry_interval_s` one decision tries the store again, and a background
probe pings it at the same interval whether or not decisions arrive, so the first
success switches back by itself (and an outage is noticed without traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluice.core.clock import Clock
from sluice.limiter.algorithms import Algorithm, LeaseAsk
from sluice.limiter.backend import Backend, Outcome, Reconciled, Spent
from sluice.limiter.memory import MemoryBackend
from sluice.limiter.policies import Check

log = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class FallbackBackend:
    """`shared` while it answers; otherwise a local share of each limit."""

    def __init__(
        self,
        shared: Backend,
        local: MemoryBackend,
        *,
        clock: Clock,
        replicas: int,
        retry_interval_s: float,
        on_change: Callable[[bool], None] = lambda degraded: None,
        ping: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._shared = shared
        self._ping = ping
        self._prober: asyncio.Task[None] | None = None
        self._local = local
        self._clock = clock
        self._share = 1.0 / replicas
        self._retry_interval_s = retry_interval_s
        self._on_change = on_change
        self._degraded = False
        self._next_try = 0.0
        self._scaled: dict[Algorithm, Algorithm] = {}

    @property
    def name(self) -> str:
        return self._shared.name

    @property
    def degraded(self) -> bool:
        """True while decisions are taken locally."""
        return self._degraded

    def _use_shared(self) -> bool:
        return not self._degraded or self._clock.monotonic() >= self._next_try

    def _fail(self, err: BaseException) -> None:
        self._next_try = self._clock.monotonic() + self._retry_interval_s
        if not self._degraded:
            self._degraded = True
            log.warning(
                "limiter store unreachable (%s): deciding locally with 1/%d of each limit",
                err,
                round(1 / self._share),
            )
            self._on_change(True)

    def _succeed(self) -> None:
        if self._degraded:
            self._degraded = False
            log.warning("limiter store reachable again: limits are shared once more")
            self._on_change(False)

    async def probe(self) -> None:
        """Ping the store once: a failure switches to local decisions, a success back."""
        if self._ping is None:
            return
        try:
            await self._ping()
        except UNREACHABLE as err:
            self._fail(err)
        else:
            self._succeed()

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._retry_interval_s)
            await self.probe()

    async def start(self) -> None:
        """Start the background probe (once the service serves)."""
        if self._ping is not None and self._prober is None:
            self._prober = asyncio.create_task(self._probe_forever())

    def _local_checks(self, checks: Sequence[Check]) -> list[Check]:
        local: list[Check] = []
        for check in checks:
            scaled = self._scaled.get(check.algorithm)
            if scaled is None:
                scaled = self._scaled[check.algorithm] = check.algorithm.scaled(self._share)
            local.append(replace(check, algorithm=scaled))
        return local

    async def acquire(
        self, checks: Sequence[Check], reservation_id: str, lease: LeaseAsk | None = None
    ) -> Outcome:
        if self._use_shared():
            try:
                outcome = await self._shared.acquire(checks, reservation_id, lease)
            except UNREACHABLE as err:
                self._fail(err)
            else:
                self._succeed()
                return outcome
        # No leases on the local share: a replica alone keeps its share exact per decision,
        # and permits leased now could outlive the outage and be used against Redis' limit.
        outcome = self._local.decide(self._local_checks(checks), reservation_id)
        return replace(outcome, local_fallback=True)

    async def reconcile(self, reservation_id: str, actual_tokens: float) -> Reconciled:
        # A reservation taken locally while degraded is settled locally.
        local = self._local.settle(reservation_id, actual_tokens)
        if local.applied:
            return local
        if self._use_shared():
            try:
                settled = await self._shared.reconcile(reservation_id, actual_tokens)
            except UNREACHABLE as err:
                self._fail(err)
            else:
                self._succeed()
                return settled
        return Reconciled(False)

    async def spent(self, key: str, period_s: float) -> Spent:
        if self._use_shared():
            try:
                found = await self._shared.spent(key, period_s)
            except UNREACHABLE as err:
                self._fail(err)
            else:
                self._succeed()
                return found
        # Alone, a replica lets a key spend its share of the budget: its local spend is
        # reported scaled up to the whole.
        local = self._local.spent_now(key, period_s)
        return Spent(local.amount / self._share, local.period_left_s)

    async def spend(self, key: str, period_s: float, amount: float) -> float:
        if self._use_shared():
            try:
                total = await self._shared.spend(key, period_s, amount)
            except UNREACHABLE as err:
                self._fail(err)
            else:
                self._succeed()
                return total
        return self._local.spend_now(key, period_s, amount) / self._share

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self._shared.close()
        await self._local.close()
