"""What admission measures: a window of recent latencies and the process's load."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from sluice.core.clock import Clock


class LatencyWindow:
    """The last N latencies, for p95 (an autoscaling signal)."""

    def __init__(self, size: int = 512) -> None:
        self._recent: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        """Record one latency in seconds."""
        self._recent.append(value)

    def quantile(self, q: float) -> float:
        """The q-quantile of the window (0 when empty)."""
        if not self._recent:
            return 0.0
        ordered = sorted(self._recent)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    def mean(self) -> float:
        """Mean of the window (0 when empty)."""
        return sum(self._recent) / len(self._recent) if self._recent else 0.0


class LoadSampler:
    """CPU and memory load as fractions 0..1, sampled at most every interval."""

    def __init__(
        self,
        clock: Clock,
        interval_s: float,
        cpu: Callable[[], float] | None = None,
        memory: Callable[[], float] | None = None,
        memory_limit_bytes: int = 0,
    ) -> None:
        import psutil  # noqa: PLC0415 - only the router samples load

        process = psutil.Process()
        process.cpu_percent(None)  # the first call only starts the measurement

        def own_memory() -> float:
            if memory_limit_bytes:
                return float(process.memory_info().rss / memory_limit_bytes)
            return float(psutil.virtual_memory().percent / 100.0)

        self._clock = clock
        self._interval = interval_s
        # This process's CPU as a share of one core: the event loop runs on one.
        self._cpu = cpu or (lambda: min(1.0, process.cpu_percent(None) / 100.0))
        self._memory = memory or own_memory
        self._at = float("-inf")
        self.cpu = 0.0
        self.memory = 0.0

    def sample(self) -> float:
        """max(CPU, memory) load, refreshed when older than the interval."""
        now = self._clock.monotonic()
        if now - self._at >= self._interval:
            self._at = now
            self.cpu = self._cpu()
            self.memory = self._memory()
        return max(self.cpu, self.memory)
