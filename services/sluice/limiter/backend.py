"""The storage protocol every limiter backend implements, and what it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sluice.limiter.algorithms import Lease, LeaseAsk, Verdict
from sluice.limiter.policies import Check


@dataclass(frozen=True, slots=True)
class Outcome:
    """The all-or-nothing result of one Acquire."""

    allowed: bool
    verdicts: list[Verdict]
    """One per check, in order. When refused, nothing was consumed from any of them."""
    local_fallback: bool = False
    """True when decided on this replica's share of each limit because the shared store
    was unreachable (see fallback.py)."""
    lease: Lease | None = None
    """Permits granted in advance along with the request (taken in the same decision)."""


@dataclass(frozen=True, slots=True)
class Reconciled:
    """The result of reconciling a reservation with real token usage."""

    applied: bool
    """False when the reservation is unknown, expired, already reconciled or held no tokens."""
    reserved_tokens: float = 0.0
    """Tokens the reservation held."""


@dataclass(frozen=True, slots=True)
class Spent:
    """A key's currency spend in the current budget period."""

    amount: float
    period_left_s: float
    """Seconds until the next period starts (and the spend is 0 again)."""


class Backend(Protocol):
    """Holds limit state and applies decisions atomically across all checks."""

    @property
    def name(self) -> str:
        """`memory` or `redis` (a metric label)."""
        ...

    async def acquire(
        self, checks: Sequence[Check], reservation_id: str, lease: LeaseAsk | None = None
    ) -> Outcome:
        """Admit against every check or none; remember token costs under the reservation.

        With `lease`, an admitted request also takes up to `lease.requests` permits from
        every check in the same atomic step (the caller checked the checks can lease)."""
        ...

    async def reconcile(self, reservation_id: str, actual_tokens: float) -> Reconciled:
        """Charge or refund the difference between reserved and actual tokens, once."""
        ...

    async def spent(self, key: str, period_s: float) -> Spent:
        """The key's spend in the current period (periods aligned to the Unix epoch)."""
        ...

    async def spend(self, key: str, period_s: float, amount: float) -> float:
        """Add `amount` to the key's spend in the current period, atomically; the total."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
