"""Prices and currency budgets per API key (router/budgets.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PriceSettings(BaseModel):
    """What a model alias costs."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    input_per_million: float = Field(0.0, ge=0.0)
    """Currency per million input (prompt) tokens."""
    output_per_million: float = Field(0.0, ge=0.0)
    """Currency per million output tokens."""


class BudgetSettings(BaseModel):
    """Currency budgets per API key."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    currency: str = "USD"
    """Currency of prices and budgets (reported in refusals)."""
    period_s: float = Field(86_400.0, gt=0.0)
    """Budget period, aligned to the epoch (86400: calendar days, UTC)."""
    prices: dict[str, PriceSettings] = Field(default_factory=dict)
    """Prices per model alias; an alias without a price costs nothing."""
    per_key: dict[str, float] = Field(default_factory=dict)
    """Budget per API key id per period; keys not listed get `default`."""
    default: float | None = Field(None, ge=0.0)
    """Budget of keys not in `per_key`; None: unlimited."""
