"""Tokens coalesced under load, sent at once when idle (docs/architecture.md).

Every message a stream sends costs the provider a gRPC write, the router a read and a
relay, and Envoy a proxied chunk. When the CPU is saturated (many streams, each token
arriving alone), those per-message costs are what limits throughput.

The load signal is how long the provider's event-loop thread waits for a CPU while it
is ready to run (Linux's per-thread schedstat): on an idle core that is next to
nothing, on a saturated one it is most of the time. Timer lag does not show it (a
thread woken often still fires its timers nearly on time), nor does the provider's own
CPU use (the other services share the core). It is sampled as streams ask whether to
pause, at most once per `sample_interval_ms`: an idle provider reads nothing and wakes
for nothing. While the share of time spent waiting is
over a threshold, an HTTP back end's stream waits `max_delay_ms` after each message
before its next read, so the tokens that arrive meanwhile travel together. When it is
not, every token is read and sent as soon as it arrives. The first token of a stream
is never delayed. Where schedstat cannot be read, coalescing stays off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from sluice.provider.settings import CoalescingSettings

log = logging.getLogger("sluice.provider")

_SMOOTHING = 0.5  # weight of the newest sample in the moving average
_SCHEDSTAT = "/proc/thread-self/schedstat"


def read_run_queue_wait() -> float:
    """Seconds the calling thread has spent waiting for a CPU since it started."""
    with open(_SCHEDSTAT, encoding="ascii") as stat:
        return int(stat.read().split()[1]) / 1e9


class LoadCoalescer:
    """Measures CPU contention; `pause()` says how long a stream should wait."""

    def __init__(
        self,
        settings: CoalescingSettings,
        registry: CollectorRegistry,
        *,
        waited: Callable[[], float] = read_run_queue_wait,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.wait_share = 0.0
        """Moving average of the share of time the loop thread waited for a CPU."""
        self._waited = waited
        self._clock = clock
        self._threshold = settings.wait_threshold
        self._interval_s = settings.sample_interval_ms / 1000.0
        self._delay_s = 0.0  # until start() finds the statistics readable
        self._last_sample: tuple[float, float] | None = None  # (at, waited)
        self._load_gauge = Gauge(
            "sluice_provider_cpu_wait_ratio",
            "Share of time the provider's event loop waited for a CPU (moving average"
            " over the samples taken while streams ran).",
            registry=registry,
        )
        self.pauses = Counter(
            "sluice_provider_coalescing_pauses",
            "Waits that let a stream's tokens gather under load (one per message).",
            registry=registry,
        )

    def pause(self) -> float:
        """Seconds a stream waits before its next read: 0 unless under load.

        Called on the event loop's thread (the one whose waiting is measured)."""
        if not self._delay_s:
            return 0.0
        now = self._clock()
        last = self._last_sample
        if last is None or now - last[0] >= self._interval_s:
            self._sample(now)
        if self.wait_share >= self._threshold:
            self.pauses.inc()
            return self._delay_s
        return 0.0

    def observe(self, share: float, intervals: float = 1.0) -> None:
        """Fold one sample (share of the time since the last one spent waiting) into the
        average; a sample spanning several intervals weighs as that many samples would, so
        a long idle gap forgets an old load as the periodic samples it stands for would."""
        weight = 1.0 - (1.0 - _SMOOTHING) ** max(intervals, 1.0)
        self.wait_share += weight * (min(1.0, max(0.0, share)) - self.wait_share)
        self._load_gauge.set(self.wait_share)

    async def start(self) -> None:
        """Switch coalescing on where the statistics can be read (on the loop's thread)."""
        if not self.settings.enabled:
            return
        try:
            self._waited()
        except (OSError, ValueError, IndexError) as err:
            log.info("token coalescing off: no per-thread scheduler statistics (%s)", err)
            return
        self._delay_s = self.settings.max_delay_ms / 1000.0

    def _sample(self, now: float) -> None:
        try:
            waited = self._waited()
        except (OSError, ValueError, IndexError):  # readable at start: not expected
            return
        last = self._last_sample
        self._last_sample = (now, waited)
        if last is not None and now > last[0]:
            elapsed = now - last[0]
            self.observe((waited - last[1]) / elapsed, elapsed / self._interval_s)
