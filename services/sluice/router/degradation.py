"""Keeping the router serving when its own resources or dependencies fail (docs/resilience.md).

- Memory: past a configured RSS bound the router sheds new requests with
  OUT_OF_MEMORY instead of growing until the kernel kills it (and every stream with it).
- Limiter: when the limiter cannot decide (down, frozen, too slow), the router applies
  a local approximate limit per API key (fail-open, the default) or refuses
  (fail-closed); either way it is counted and flagged on the stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aiolimiter import AsyncLimiter
from prometheus_client import CollectorRegistry, Counter

from sluice.core.clock import Clock
from sluice.core.errors import (
    OutOfMemoryError,
    QuotaExceededError,
    QuotaViolation,
    ServiceUnavailableError,
)

LIMITER_DEGRADED = "limiter_unavailable"
LIMITER_LOCAL_SHARE = "limiter_local_share"
"""The limiter decided, but alone on its share: its shared store was unreachable."""
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class MemoryGuard:
    """Sheds load while RSS is over the bound; RSS is re-read at most every 100 ms."""

    def __init__(
        self,
        limit_mb: int,
        clock: Clock,
        registry: CollectorRegistry,
        reader: Callable[[], int] = resident_bytes,
    ) -> None:
        self._limit = limit_mb * 1024 * 1024
        self._clock = clock
        self._reader = reader
        self._checked_at = float("-inf")
        self._over = False
        self.shed = Counter(
            "sluice_router_shed",
            "Requests refused to protect the router, by reason.",
            ["reason"],
            registry=registry,
        )

    def check(self) -> None:
        """Raise OutOfMemoryError while the router is over its memory bound."""
        if not self._limit:
            return
        now = self._clock.monotonic()
        if now - self._checked_at >= 0.1:
            self._checked_at = now
            self._over = self._reader() > self._limit
        if self._over:
            self.shed.labels("OUT_OF_MEMORY").inc()
            raise OutOfMemoryError(
                "the gateway is over its memory bound and sheds load; retry shortly",
                retry_after_s=1.0,
            )


class LocalLimits:
    """The approximate per-key limit applied while the limiter is unreachable."""

    def __init__(self, rate_per_s: float, fail_closed: bool, registry: CollectorRegistry) -> None:
        self._rate = rate_per_s
        self._fail_closed = fail_closed
        self._limiters: dict[str, AsyncLimiter] = {}
        self.decisions = Counter(
            "sluice_router_limiter_degraded",
            "Admissions decided without the limiter, by outcome (admitted, limited, refused).",
            ["outcome"],
            registry=registry,
        )

    async def admit(self, key_id: str) -> None:
        """Admit locally, or raise (QUOTA_EXCEEDED over the local limit; fail-closed: refuse)."""
        if self._fail_closed:
            self.decisions.labels("refused").inc()
            raise ServiceUnavailableError(
                "admission control is unavailable; retry shortly",
                metadata={"dependency": "limiter"},
                retry_after_s=1.0,
            )
        limiter = self._limiters.get(key_id)
        if limiter is None:
            if len(self._limiters) > 100_000:
                self._limiters.clear()  # bounded memory; an approximate limit may forget
            limiter = self._limiters[key_id] = AsyncLimiter(self._rate, 1.0)
        if not limiter.has_capacity():
            self.decisions.labels("limited").inc()
            raise QuotaExceededError(
                "request rate over the gateway's local limit",
                quota_violations=[
                    QuotaViolation(subject=f"api_key:{key_id}", description="local request rate")
                ],
                retry_after_s=1.0 / self._rate,
            )
        await limiter.acquire()
        self.decisions.labels("admitted").inc()
