"""Retry policy: exponential backoff with full jitter, and a retry budget (docs/resilience.md).

Full jitter (a uniform draw between 0 and the exponential cap) spreads retries of many
clients over time instead of synchronising them. An upstream Retry-After/RetryInfo is
a floor: retrying earlier than the upstream asked is pointless. The budget caps
retries at a share of recent requests, so an outage cannot multiply the load.
"""

from __future__ import annotations

import math
import random
from collections import deque

from pydantic import BaseModel, ConfigDict, Field

from sluice.core.clock import Clock


class RetrySettings(BaseModel):
    """Retry settings."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    max_attempts: int = Field(2, ge=1, le=10)
    """Attempts per back end, the first included (1 disables retries)."""
    initial_backoff_ms: float = Field(50.0, ge=0.0)
    """Cap of the first retry's delay."""
    max_backoff_ms: float = Field(2_000.0, ge=0.0)
    """Largest delay cap."""
    multiplier: float = Field(2.0, ge=1.0)
    """Growth of the cap per retry."""
    max_retry_after_ms: float = Field(5_000.0, ge=0.0)
    """An upstream asking to wait longer than this is not retried; the chain moves on."""
    budget_ratio: float = Field(0.2, ge=0.0, le=1.0)
    """Retries allowed as a share of requests in the budget window."""
    budget_window_s: float = Field(10.0, gt=0.0)
    """Length of the budget's sliding window."""
    budget_min_retries: int = Field(10, ge=0)
    """Retries always allowed per window, so a quiet gateway can still retry."""


class Backoff:
    """Delays between attempts."""

    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        self._settings = settings
        # Jitter, not security.
        self._rng = rng or random.Random()  # noqa: S311  # nosec B311

    def cap_s(self, retry: int) -> float:
        """The largest delay before retry number `retry` (1 = first retry)."""
        s = self._settings
        return min(s.max_backoff_ms, s.initial_backoff_ms * s.multiplier ** (retry - 1)) / 1000.0

    def delay_s(self, retry: int, retry_after_s: float | None = None) -> float:
        """Full-jitter delay before retry `retry`, never shorter than the upstream asked."""
        jittered = self._rng.uniform(0.0, self.cap_s(retry))
        return max(jittered, retry_after_s or 0.0)


class RetryBudget:
    """Retries ≤ ratio x requests (+ a small floor) over a sliding window.

    The window is counted in `BUCKETS` slices of `budget_window_s / BUCKETS` seconds, so
    its memory is a fixed handful of counters whatever the request rate, and every call
    (a request on the healthy path too) drops the slices that left the window. Keeping a
    timestamp per request and trimming only when a retry was spent grew without bound on
    a gateway that never failed. An event leaves the window up to one slice early.
    """

    BUCKETS = 20

    def __init__(self, settings: RetrySettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._width = settings.budget_window_s / self.BUCKETS
        # [slice index, requests, retries], oldest first; at most BUCKETS entries.
        self._slices: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0

    def _current(self) -> list[int]:
        index = math.floor(self._clock.monotonic() / self._width)
        slices = self._slices
        while slices and slices[0][0] <= index - self.BUCKETS:
            _, requests, retries = slices.popleft()
            self._requests -= requests
            self._retries -= retries
        if not slices or slices[-1][0] != index:
            slices.append([index, 0, 0])
        return slices[-1]

    def record_request(self) -> None:
        """A new request (not a retry) started."""
        self._current()[1] += 1
        self._requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when the budget is spent."""
        current = self._current()
        allowed = self._settings.budget_ratio * self._requests
        allowed += self._settings.budget_min_retries
        if self._retries + 1 > allowed:
            return False
        current[2] += 1
        self._retries += 1
        return True

    @property
    def retries_in_window(self) -> int:
        """Retries spent in the current window."""
        self._current()
        return self._retries

    @property
    def slices(self) -> int:
        """Slices of the window held now (never more than `BUCKETS`)."""
        return len(self._slices)
