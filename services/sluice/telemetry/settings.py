"""Telemetry service settings (YAML section `telemetry`, env prefix SLUICE_TELEMETRY_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from sluice.core.config import ServerSettings, ServiceSettings


class TelemetrySettings(ServiceSettings):
    """Settings of the telemetry service."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_TELEMETRY_", env_nested_delimiter="__", use_attribute_docstrings=True
    )

    server: ServerSettings = ServerSettings(port=4317, metrics_port=9104)
    """Listeners (4317 is the standard OTLP/gRPC port)."""
    max_traces: int = Field(10_000, ge=1)
    """Recent traces kept in memory; the oldest are dropped beyond this."""
    max_spans_per_trace: int = Field(2_000, ge=1)
    """Spans kept per trace; later ones are dropped and counted."""
