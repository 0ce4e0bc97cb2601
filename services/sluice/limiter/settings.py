"""Limiter service settings (YAML section `limiter`, env prefix SLUICE_LIMITER_)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from sluice.core.config import ServerSettings, ServiceSettings


class BucketSettings(BaseModel):
    """A token bucket: `capacity` requests of burst, refilled at `refill_per_second`."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    capacity: float = Field(1000.0, gt=0.0)
    """Largest burst, in requests."""
    refill_per_second: float = Field(500.0, gt=0.0)
    """Sustained rate, in requests per second."""


class LimiterSettings(ServiceSettings):
    """Settings of the limiter service."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_LIMITER_", env_nested_delimiter="__", use_attribute_docstrings=True
    )

    server: ServerSettings = ServerSettings(port=50052, metrics_port=9102)
    """Listeners."""
    per_key: BucketSettings = BucketSettings()
    """The request bucket every API key gets unless overridden."""
    key_overrides: dict[str, BucketSettings] = Field(default_factory=dict)
    """Buckets for particular API key ids."""
    max_tracked_keys: int = Field(100_000, ge=1)
    """Buckets kept in memory; the least recently used are forgotten beyond this."""
