"""Admission's settings: the queue per back end, the adaptive limit, shedding and
time-of-day caps (router/admission/)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AdaptiveSettings(BaseModel):
    """The AIMD concurrency limit per back end (docs/runtime.md, "Capacity"): it starts at
    `initial_limit`, grows by `increase_step` per first token that arrives within
    `target_ttft_ms` while the limit is in use, is cut by `decrease_factor` per slower
    first token, and stays within `min_limit` and the ceiling. The ceiling is what the
    router's memory holds: `memory_budget_mb` over `stream_memory_kb`, unless `max_limit`
    sets it."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    initial_limit: int = Field(64, ge=1)
    """Concurrent streams allowed per back end at start; the limit grows from here."""
    min_limit: int = Field(4, ge=1)
    """Floor of the adaptive limit."""
    max_limit: int | None = Field(None, ge=1)
    """Ceiling of the adaptive limit; unset, it is `memory_budget_mb` over
    `stream_memory_kb`."""
    memory_budget_mb: int = Field(512, ge=1)
    """Memory one router may spend on open streams (on top of its idle size, about
    100 MB); with `stream_memory_kb` it sets the ceiling when `max_limit` is unset."""
    stream_memory_kb: int = Field(96, ge=1)
    """Resident memory one open stream costs the router: measured 67 KB for a stream that
    is read as it comes (loadtest/stream_memory.py), rounded up to the 64 KiB receive
    window plus the kept answer (the Kubernetes sizing uses the same figure)."""
    increase_step: float = Field(1.0, gt=0.0)
    """Added to the limit per first token within the target while the limit is in use
    (at least half taken, or requests waiting)."""
    target_ttft_ms: float = Field(2000.0, gt=0.0)
    """Time to first token the back end should stay within; slower answers cut the limit."""
    decrease_factor: float = Field(0.9, gt=0.0, lt=1.0)
    """Multiplicative decrease on a slow answer (once per answer admitted after the
    previous cut)."""

    @property
    def ceiling(self) -> int:
        """The largest the limit may grow: `max_limit`, else the memory budget's worth of
        streams."""
        if self.max_limit is not None:
            return self.max_limit
        return max(1, self.memory_budget_mb * 1024 // self.stream_memory_kb)


class SheddingSettings(BaseModel):
    """Load-based shedding thresholds, as fractions 0..1 of the router's CPU (its one
    event-loop core) and of its memory (RSS over `resilience.memory_limit_mb`, or the
    host's memory in use when that is 0)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = False
    """Shed by class while the router is overloaded (off by default: turn on where the
    router has its own CPU; on a shared machine other processes' load does not count)."""
    background_at: float = Field(0.80, gt=0.0, le=1.0)
    """Load at which `background` requests are refused."""
    normal_at: float = Field(0.90, gt=0.0, le=1.0)
    """Load at which `normal` requests are refused too."""
    all_at: float = Field(0.98, gt=0.0, le=1.0)
    """Load at which `premium` and `critical` are refused too."""
    sample_interval_ms: float = Field(250.0, ge=10.0)
    """How often CPU and memory are sampled."""


class ScheduleSettings(BaseModel):
    """A daily window (UTC) during which the concurrency limit per back end is capped."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    """Start of the window, HH:MM UTC (inclusive)."""
    end: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    """End of the window, HH:MM UTC (exclusive); before `start` wraps past midnight."""
    max_limit: int = Field(ge=1)
    """Concurrency cap per back end while the window is active."""

    def minutes(self) -> tuple[int, int]:
        """(start, end) as minutes after midnight."""
        start_h, start_m = self.start.split(":")
        end_h, end_m = self.end.split(":")
        return int(start_h) * 60 + int(start_m), int(end_h) * 60 + int(end_m)

    def active(self, minute_of_day: int) -> bool:
        """Whether the window covers this minute of the day."""
        start, end = self.minutes()
        if start <= end:
            return start <= minute_of_day < end
        return minute_of_day >= start or minute_of_day < end


class AdmissionSettings(BaseModel):
    """Admission in front of back-end capacity."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Queue and schedule requests per back end (off: straight to the fallback chain)."""
    max_queue: int = Field(8192, ge=0)
    """Requests that may wait per back end; beyond, SERVICE_UNAVAILABLE at once. Deep
    enough for thousands of streams opened at once while the limit grows (a waiter costs
    a few KB)."""
    tenant_weights: dict[str, float] = Field(default_factory=dict)
    """Relative share of capacity per tenant within a class (default 1)."""
    adaptive: AdaptiveSettings = AdaptiveSettings()
    """The adaptive concurrency limit."""
    shedding: SheddingSettings = SheddingSettings()
    """Load-based shedding."""
    schedules: list[ScheduleSettings] = Field(default_factory=list)
    """Time-of-day caps on the concurrency limit (the smallest active cap applies), e.g.
    fewer slots during a nightly batch window that shares the back ends."""
