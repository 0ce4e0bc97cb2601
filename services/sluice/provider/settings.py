"""Provider service settings (YAML section `provider`, env prefix SLUICE_PROVIDER_)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from sluice.core.config import ServerSettings, ServiceSettings
from sluice.provider.faults import FaultSettings


class SimulatedBackendSettings(BaseModel):
    """The built-in simulated model: deterministic text paced like a real model."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    kind: Literal["simulated"] = "simulated"
    """Back-end kind."""
    model: str = "sluice-sim-1"
    """Model name the back end reports."""
    time_to_first_token_ms: float = Field(20.0, ge=0.0, le=600_000.0)
    """Delay before the first token."""
    tokens_per_second: float = Field(200.0, ge=0.0)
    """Output pace after the first token; 0 sends the whole answer at once."""
    min_tick_ms: float = Field(5.0, ge=0.5, le=1000.0)
    """Shortest gap between two deltas; tokens due within one tick travel together."""
    answer_tokens: int = Field(48, ge=1, le=100_000)
    """Natural answer length before max_tokens applies (varies ±50% with the prompt)."""
    context_window: int = Field(32_768, ge=16)
    """Largest prompt + max_tokens the model accepts."""
    faults: FaultSettings = FaultSettings()
    """Faults injected into every request of this back end (see provider/faults.py)."""


class ReplicaPorts(BaseModel):
    """Listeners of one extra provider replica started by `sluice up`."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    port: int = Field(ge=1, le=65535)
    """gRPC port."""
    metrics_port: int = Field(ge=1, le=65535)
    """Prometheus port."""


class ProviderSettings(ServiceSettings):
    """Settings of the provider service."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_PROVIDER_", env_nested_delimiter="__", use_attribute_docstrings=True
    )

    server: ServerSettings = ServerSettings(port=50053, metrics_port=9103)
    """Listeners."""
    backends: dict[str, SimulatedBackendSettings] = Field(
        default_factory=lambda: {"simulated": SimulatedBackendSettings()}
    )
    """Back ends by name."""
    replicas: int = Field(1, ge=1, le=16)
    """Provider processes `sluice up` starts (the router balances over them)."""
    replica_ports: list[ReplicaPorts] = Field(default_factory=list)
    """Listeners of replicas 2..N; a missing entry uses port + 100*i and metrics_port + 100*i."""
    fault_injection: bool = False
    """Honour per-request faults from the x-sluice-fault header (tests and chaos runs only)."""

    @model_validator(mode="after")
    def _has_backend(self) -> ProviderSettings:
        if not self.backends:
            raise ValueError("at least one back end must be configured")
        return self
