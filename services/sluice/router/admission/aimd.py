"""The adaptive concurrency limit of one back end."""

from __future__ import annotations

from sluice.router.settings.admission import AdaptiveSettings


class Aimd:
    """Additive-increase / multiplicative-decrease concurrency limit."""

    def __init__(self, settings: AdaptiveSettings) -> None:
        self._settings = settings
        self._limit = float(
            min(max(settings.initial_limit, settings.min_limit), settings.max_limit)
        )

    @property
    def limit(self) -> int:
        """The current whole limit."""
        return max(self._settings.min_limit, int(self._limit))

    def observe(self, latency_s: float, *, overloaded: bool = False) -> None:
        """Feed one completion's time to first token (or an overload signal)."""
        s = self._settings
        if overloaded or latency_s * 1000.0 > s.target_ttft_ms:
            self._limit = max(float(s.min_limit), self._limit * s.decrease_factor)
        else:
            self._limit = min(float(s.max_limit), self._limit + 1.0 / max(self._limit, 1.0))
