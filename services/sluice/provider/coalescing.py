"""Tokens coalesced under load, sent at once when idle (SPEC §3).

Every message a stream sends costs the provider a gRPC write, the router a read and a
relay, and Envoy a proxied chunk. When the CPU is saturated (many streams, each token
arriving alone), those per-message costs are what limits throughput.

The load signal is how long the provider's event-loop thread waits for a CPU while it
is ready to run (Linux's per-thread schedstat): on an idle core that is next to
nothing, on a saturated one it is most of the time. Timer lag does not show it (a
thread woken often still fires its timers nearly on time), nor does the provider's own
CPU use (the other services share the core). While the share of time spent waiting is
over a threshold, an HTTP back end's stream waits `max_delay_ms` after each message
before its next read, so the tokens that arrive meanwhile travel together. When it is
not, every token is read and sent as soon as it arrives. The first token of a stream
is never delayed. Where schedstat cannot be read, coalescing stays off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("sluice.provider")

_SMOOTHING = 0.5  # weight of the newest sample in the moving average
_SCHEDSTAT = "/proc/thread-self/schedstat"


class CoalescingSettings(BaseModel):
    """When and how long an HTTP back end's stream lets tokens gather under load."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Coalesce tokens while the provider is under load."""
    wait_threshold: float = Field(0.25, gt=0.0, le=1.0)
    """Share of time the event-loop thread waits for a CPU (moving average) over which
    the provider counts as under load."""
    max_delay_ms: float = Field(20.0, ge=0.0, le=1000.0)
    """How long a stream waits after a message before its next read, under load."""
    sample_interval_ms: float = Field(100.0, ge=10.0, le=10_000.0)
    """How often the load is measured."""


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
    ) -> None:
        self.settings = settings
        self.wait_share = 0.0
        """Moving average of the share of time the loop thread waited for a CPU."""
        self._waited = waited
        self._threshold = settings.wait_threshold
        self._delay_s = settings.max_delay_ms / 1000.0 if settings.enabled else 0.0
        self._task: asyncio.Task[None] | None = None
        self._load_gauge = Gauge(
            "sluice_provider_cpu_wait_ratio",
            "Share of time the provider's event loop waited for a CPU (moving average).",
            registry=registry,
        )
        self.pauses = Counter(
            "sluice_provider_coalescing_pauses",
            "Waits that let a stream's tokens gather under load (one per message).",
            registry=registry,
        )

    def pause(self) -> float:
        """Seconds a stream waits before its next read: 0 unless under load."""
        if self._delay_s and self.wait_share >= self._threshold:
            self.pauses.inc()
            return self._delay_s
        return 0.0

    def observe(self, share: float) -> None:
        """Fold one sample (share of the last interval spent waiting) into the average."""
        self.wait_share += _SMOOTHING * (min(1.0, max(0.0, share)) - self.wait_share)
        self._load_gauge.set(self.wait_share)

    async def start(self) -> None:
        """Start measuring, on the running loop's thread; off where it cannot be read."""
        if not self._delay_s or self._task is not None:
            return
        try:
            self._waited()
        except (OSError, ValueError, IndexError) as err:
            log.info("token coalescing off: no per-thread scheduler statistics (%s)", err)
            return
        self._task = asyncio.create_task(self._measure(), name="provider-cpu-wait")

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _measure(self) -> None:
        interval = self.settings.sample_interval_ms / 1000.0
        waited, at = self._waited(), time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now_waited, now = self._waited(), time.monotonic()
            if now > at:
                self.observe((now_waited - waited) / (now - at))
            waited, at = now_waited, now
