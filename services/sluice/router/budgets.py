"""Cost-aware limits: a budget in currency per API key per period, from per-model prices.

Before a request is admitted, the key's spend in the current period (aligned windows of
`period_s`, on the injected wall clock) is compared with its budget; a spent budget is
BUSINESS_RULE_VIOLATION (gRPC FAILED_PRECONDITION, HTTP 412 through Envoy). When a
stream ends, its real usage is priced (input and output tokens per million, per model
alias) and added.

Spend is shared by every router replica: it lives in the limiter (which owns quota
state, in its Redis when it has one). The router sends the key's budget with its
Acquire (the limiter refuses a spent key before any limit, atomically with the
decision) and each finished stream's cost with a Spend call. This class owns prices and
budgets, and keeps a local copy of the spend, used only while the limiter cannot be
reached (then each router enforces the budget for the traffic it sees).
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter

from sluice.core.clock import Clock
from sluice.core.errors import BusinessRuleViolationError
from sluice.router.settings.budgets import BudgetSettings


class Budgets:
    """Spend per key in the current period, checked before and charged after a stream."""

    def __init__(self, settings: BudgetSettings, clock: Clock, registry: CollectorRegistry) -> None:
        self._settings = settings
        self._clock = clock
        self._spent: dict[str, tuple[int, float]] = {}
        self.charged = Counter(
            "sluice_router_spend",
            "Currency charged to API keys' budgets, per model alias.",
            ["model"],
            registry=registry,
        )
        self.refused = Counter(
            "sluice_router_budget_refusals",
            "Requests refused because the key's budget for the period is spent.",
            registry=registry,
        )

    def _period(self) -> int:
        return math.floor(self._clock.wall() / self._settings.period_s)

    @property
    def settings(self) -> BudgetSettings:
        """Prices, budgets, period and currency."""
        return self._settings

    def budget(self, key_id: str, own: float | None = None) -> float | None:
        """The key's budget per period (None: unlimited); `own`, the key store entry's
        budget, wins over the settings."""
        if own is not None:
            return own
        return self._settings.per_key.get(key_id, self._settings.default)

    def spent(self, key_id: str) -> float:
        """The key's spend in the current period."""
        period, amount = self._spent.get(key_id, (self._period(), 0.0))
        return amount if period == self._period() else 0.0

    def check(self, key_id: str, own: float | None = None) -> None:
        """Raise BUSINESS_RULE_VIOLATION when the key's budget for the period is spent
        (by this router's own count: the fallback while the limiter is unreachable)."""
        budget = self.budget(key_id, own)
        if budget is None:
            return
        spent = self.spent(key_id)
        if spent >= budget:
            self.refused.inc()
            period_s = self._settings.period_s
            resets_in = period_s - (self._clock.wall() % period_s)
            raise BusinessRuleViolationError(
                f"the API key's budget of {budget:g} {self._settings.currency} for this "
                f"period is spent",
                metadata={
                    "budget": f"{budget:g}",
                    "spent": f"{spent:.6g}",
                    "currency": self._settings.currency,
                },
                retry_after_s=resets_in,
            )

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """What the usage costs under the alias's price."""
        price = self._settings.prices.get(model)
        if price is None:
            return 0.0
        return (
            input_tokens * price.input_per_million + output_tokens * price.output_per_million
        ) / 1_000_000

    def charge(self, key_id: str, model: str, input_tokens: int, output_tokens: int) -> float:
        """Add a finished stream's cost to the key's local spend; the cost (to send on)."""
        amount = self.cost(model, input_tokens, output_tokens)
        if amount <= 0:
            return 0.0
        period = self._period()
        if len(self._spent) > 100_000:
            self._spent = {k: v for k, v in self._spent.items() if v[0] == period}
        self._spent[key_id] = (period, self.spent(key_id) + amount)
        self.charged.labels(model).inc(amount)
        return amount
