"""How a provider stream reaches its client: the adaptive buffer (router/buffer.py) and
the multiplexed provider calls (router/provider_streams.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BufferSettings(BaseModel):
    """Buffer management between a provider stream and its client (docs/architecture.md)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    initial_buffer_size: int = Field(4096, ge=64)
    """Bytes of coalesced text sent to a lagging client at once: a held batch this big is
    flushed without waiting for the flush interval."""
    max_buffer_size: int = Field(65_536, ge=1024)
    """Most bytes of text held for one stream; one data event never grows past it."""
    flush_interval_ms: int = Field(100, ge=1, le=10_000)
    """Longest a delta is held back (coalescing) while the client lags."""
    backpressure_threshold: float = Field(0.8, gt=0.0, le=1.0)
    """Fraction of max_buffer_size at which the provider stream stops being read until the
    client has taken the held text."""
    slow_write_ms: float = Field(20.0, ge=0.0)
    """A single write slower than this marks the client as lagging and switches the stream
    to buffered mode for the rest of its life."""

    @model_validator(mode="after")
    def _initial_within_max(self) -> BufferSettings:
        if self.initial_buffer_size > self.max_buffer_size:
            raise ValueError("initial_buffer_size must not exceed max_buffer_size")
        return self

    @property
    def pause_bytes(self) -> int:
        """Held bytes at which the provider read pauses."""
        return max(1, int(self.max_buffer_size * self.backpressure_threshold))


class MultiplexSettings(BaseModel):
    """Carrying provider streams on a few long-lived Multiplex calls."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Off: one ProviderService.Stream call per provider stream."""
    window_bytes: int = Field(65_536, ge=1024, le=16 * 1024 * 1024)
    """Bytes of a stream's events the provider may send ahead of what the router has
    taken: a stalled client holds at most about this much here (as a call's 64 KiB
    HTTP/2 window did)."""
    max_age_s: float = Field(300.0, gt=0)
    """A Multiplex call takes new streams this long, then is closed once its last stream
    ends; its successor may land on another provider replica, so load spreads again
    after a replica restarts."""
