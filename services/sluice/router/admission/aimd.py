"""The adaptive concurrency limit of one back end (docs/runtime.md, "Capacity")."""

from __future__ import annotations

from sluice.router.settings.admission import AdaptiveSettings


class Aimd:
    """Additive-increase / multiplicative-decrease concurrency limit.

    Fed one sample per stream, at its first token rather than at its end: LLM answers
    last tens of seconds, so a limit that learned only from completions would take
    minutes to find the capacity. Growth is a fixed step per healthy sample, and only
    while the limit is in use (an idle back end says nothing about what it could take).
    A slow sample cuts the limit, but only a stream admitted after the previous cut can
    cut again: the streams admitted under the old, higher limit all answer slowly
    together, and cutting once for each of them would collapse the limit to its floor
    while thousands of long streams still hold their slots.
    """

    def __init__(self, settings: AdaptiveSettings) -> None:
        self._settings = settings
        self._ceiling = float(settings.ceiling)
        self._floor = float(min(settings.min_limit, settings.ceiling))
        self._limit = min(max(float(settings.initial_limit), self._floor), self._ceiling)
        self._last_cut = float("-inf")
        self.growing = True
        """Whether the last sample was healthy (the limit may still rise to the ceiling)."""

    @property
    def limit(self) -> int:
        """The current whole limit."""
        return int(self._limit)

    @property
    def ceiling(self) -> int:
        """The largest the limit may grow."""
        return int(self._ceiling)

    def observe(
        self,
        latency_s: float,
        *,
        overloaded: bool = False,
        admitted_at: float | None = None,
        now: float | None = None,
        demand: int | None = None,
    ) -> None:
        """Feed one stream's time to first token (or an overload signal).

        `admitted_at` and `now` (monotonic seconds) let a cut count once per round of
        admissions; `demand` (streams running plus waiting) stops growth while less
        than half the limit is used. Left out, every sample counts.
        """
        s = self._settings
        if overloaded or latency_s * 1000.0 > s.target_ttft_ms:
            self.growing = False
            if admitted_at is not None and admitted_at < self._last_cut:
                return  # admitted under the limit already cut for
            self._limit = max(self._floor, self._limit * s.decrease_factor)
            if now is not None:
                self._last_cut = now
            return
        self.growing = True
        if demand is None or demand * 2 >= self._limit:
            self._limit = min(self._ceiling, self._limit + s.increase_step)
