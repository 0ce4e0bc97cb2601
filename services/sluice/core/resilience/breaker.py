"""A circuit breaker per back end (docs/resilience.md).

CLOSED counts consecutive failures; at ``failure_threshold`` it OPENs and refuses
every call for ``reset_timeout``. Then it goes HALF_OPEN and lets exactly
``half_open_requests`` probes through; when all of them succeed it CLOSEs, and the
first failed probe OPENs it again for another ``reset_timeout``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from sluice.core.clock import Clock


class BreakerSettings(BaseModel):
    """Circuit breaker settings; the defaults are the spec's."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    failure_threshold: int = Field(5, ge=1)
    """Consecutive failures that open the breaker."""
    timeout: int = Field(30_000, ge=1)
    """Call timeout in ms: a back end that sends nothing for this long has failed."""
    whole_answer_timeout: int = Field(120_000, ge=1)
    """Call timeout in ms for a whole answer (a non-streaming client's call, which the
    back end answers in one piece): nothing comes before the end, so it is longer."""
    reset_timeout: int = Field(60_000, ge=1)
    """Milliseconds an open breaker waits before letting probes through."""
    half_open_requests: int = Field(3, ge=1)
    """Probes allowed while half-open; all must succeed to close."""


class BreakerState(enum.IntEnum):
    """Breaker states; the values are what the state gauge exports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


Listener = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    """One back end's breaker. Not thread-safe; used from one event loop."""

    def __init__(
        self, settings: BreakerSettings, clock: Clock, on_transition: Listener | None = None
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes_sent = 0
        self._probes_ok = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker past its reset timeout reads HALF_OPEN)."""
        self._maybe_half_open()
        return self._state

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if new is BreakerState.OPEN:
            self._opened_at = self._clock.monotonic()
        if new is BreakerState.HALF_OPEN:
            self._probes_sent = self._probes_ok = 0
        if new is BreakerState.CLOSED:
            self._failures = 0
        if old is not new and self._on_transition is not None:
            self._on_transition(old, new)

    def _maybe_half_open(self) -> None:
        if self._state is BreakerState.OPEN:
            waited_ms = (self._clock.monotonic() - self._opened_at) * 1000.0
            if waited_ms >= self.settings.reset_timeout:
                self._move(BreakerState.HALF_OPEN)

    def allow(self) -> bool:
        """Whether a call may go to the back end now; a True in HALF_OPEN is a probe."""
        self._maybe_half_open()
        if self._state is BreakerState.CLOSED:
            return True
        if (
            self._state is BreakerState.HALF_OPEN
            and self._probes_sent < self.settings.half_open_requests
        ):
            self._probes_sent += 1
            return True
        return False

    def record_success(self) -> None:
        """An allowed call succeeded."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes_ok += 1
            if self._probes_ok >= self.settings.half_open_requests:
                self._move(BreakerState.CLOSED)
        elif self._state is BreakerState.CLOSED:
            self._failures = 0

    def record_failure(self) -> None:
        """An allowed call failed (in a way that says the back end is unwell)."""
        if self._state is BreakerState.HALF_OPEN:
            self._move(BreakerState.OPEN)
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.settings.failure_threshold:
                self._move(BreakerState.OPEN)

    def record_abandoned(self) -> None:
        """An allowed call ended without a verdict (the client left): free its probe slot.

        Without this a cancelled probe would hold a half-open breaker forever: it could
        neither collect enough successes to close nor a failure to reopen.
        """
        if self._state is BreakerState.HALF_OPEN and self._probes_sent > self._probes_ok:
            self._probes_sent -= 1

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets probes through (0 when not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        elapsed = self._clock.monotonic() - self._opened_at
        return max(0.0, self.settings.reset_timeout / 1000.0 - elapsed)
