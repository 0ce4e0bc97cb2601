"""Admission's settings: the queue per back end, the adaptive limit, shedding and
time-of-day caps (router/admission/)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AdaptiveSettings(BaseModel):
    """The AIMD concurrency limit per back end."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    initial_limit: int = Field(256, ge=1)
    """Concurrent streams allowed per back end at start."""
    min_limit: int = Field(4, ge=1)
    """Floor of the adaptive limit."""
    max_limit: int = Field(256, ge=1)
    """Ceiling of the adaptive limit."""
    target_ttft_ms: float = Field(2000.0, gt=0.0)
    """Time to first token the back end should stay within; slower answers cut the limit."""
    decrease_factor: float = Field(0.9, gt=0.0, lt=1.0)
    """Multiplicative decrease on a slow answer."""


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
    max_queue: int = Field(1024, ge=0)
    """Requests that may wait per back end; beyond, SERVICE_UNAVAILABLE at once."""
    tenant_weights: dict[str, float] = Field(default_factory=dict)
    """Relative share of capacity per tenant within a class (default 1)."""
    adaptive: AdaptiveSettings = AdaptiveSettings()
    """The adaptive concurrency limit."""
    shedding: SheddingSettings = SheddingSettings()
    """Load-based shedding."""
    schedules: list[ScheduleSettings] = Field(default_factory=list)
    """Time-of-day caps on the concurrency limit (the smallest active cap applies), e.g.
    fewer slots during a nightly batch window that shares the back ends."""
