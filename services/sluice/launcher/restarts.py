"""When to restart a part of the suite that exited, and when to give up on it.

Each exit waits `backoff_initial_s * 2**n` before the restart (n: exits in a row,
capped at `backoff_max_s`); a part that ran `stable_s` before exiting starts over at
the shortest wait. More than `max_restarts` restarts within `restart_window_s` make the
part crash-looping: it is reported and left stopped, so one broken part neither
spins the machine nor takes the rest of the suite down (docs/runtime.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sluice.launcher.settings import SupervisorSettings


@dataclass
class RestartPolicy:
    """The restart history of one part; time is passed in, so tests need no sleeping."""

    settings: SupervisorSettings
    failures_in_a_row: int = 0
    restarts: deque[float] = field(default_factory=deque)
    """Times of the restarts still inside the window."""
    crash_looping: bool = False

    def on_exit(self, now: float, lived_s: float) -> float | None:
        """The wait before restarting a part that just exited; None gives up on it."""
        s = self.settings
        window_start = now - s.restart_window_s
        while self.restarts and self.restarts[0] < window_start:
            self.restarts.popleft()
        if len(self.restarts) >= s.max_restarts:
            self.crash_looping = True
            return None
        self.failures_in_a_row = 0 if lived_s >= s.stable_s else self.failures_in_a_row + 1
        return float(min(s.backoff_max_s, s.backoff_initial_s * 2**self.failures_in_a_row))

    def restarted(self, now: float) -> None:
        """Count a restart made at `now`."""
        self.restarts.append(now)

    @property
    def tries(self) -> int:
        """Restarts counted in the current window."""
        return len(self.restarts)
