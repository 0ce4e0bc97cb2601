"""Currency budgets per key per period, on a fake wall clock."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from sluice.core.errors import BusinessRuleViolationError
from sluice.router.budgets import Budgets
from sluice.router.settings.budgets import BudgetSettings
from tests.support import FakeClock


def budgets(clock: FakeClock) -> tuple[Budgets, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = BudgetSettings(
        period_s=3600,
        prices={"gpt": {"input_per_million": 2.0, "output_per_million": 10.0}},
        per_key={"small": 0.001},
        default=None,
    )
    return Budgets(settings, clock, registry), registry


def test_usage_is_priced_per_model_and_unpriced_models_are_free() -> None:
    spend, _ = budgets(FakeClock())
    assert spend.cost("gpt", 1_000_000, 0) == pytest.approx(2.0)
    assert spend.cost("gpt", 500, 100) == pytest.approx(0.002)
    assert spend.cost("free", 10**9, 10**9) == 0.0


def test_a_spent_budget_is_business_rule_violation_412_until_the_period_ends() -> None:
    clock = FakeClock(wall=7200.0 + 100)  # 100 s into an hour period
    spend, registry = budgets(clock)
    spend.check("small")  # nothing spent yet
    spend.charge("small", "gpt", 0, 60)  # 0.0006
    spend.check("small")
    spend.charge("small", "gpt", 0, 40)  # 0.001 in all: spent
    with pytest.raises(BusinessRuleViolationError) as caught:
        spend.check("small")
    err = caught.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.http_status == 412
    assert err.metadata["budget"] == "0.001"
    assert err.retry_after_s == pytest.approx(3500.0)
    assert registry.get_sample_value("sluice_router_budget_refusals_total") == 1
    assert registry.get_sample_value("sluice_router_spend_total", {"model": "gpt"}) == (
        pytest.approx(0.001)
    )

    clock.advance(3500.0)  # the next period: a fresh budget
    assert spend.spent("small") == 0.0
    spend.check("small")


def test_keys_without_a_budget_are_unlimited_and_others_are_separate() -> None:
    spend, _ = budgets(FakeClock())
    spend.charge("big", "gpt", 10**9, 10**9)
    spend.check("big")
    spend.check("small")
