"""Provider service settings (YAML section `provider`, env prefix SLUICE_PROVIDER_)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic_settings import SettingsConfigDict

from sluice.core.config import SecuritySettings, ServerSettings, ServiceSettings


class FaultSettings(BaseModel):
    """Faults a simulated back end injects. All off by default."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of requests that fail at once as an upstream 500 (SERVICE_UNAVAILABLE)."""
    rate_limit_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of requests refused as an upstream 429 (RATE_LIMIT_EXCEEDED)."""
    retry_after_ms: int = Field(1000, ge=0, le=3_600_000)
    """Retry-after the injected 429 carries."""
    added_latency_ms: float = Field(0.0, ge=0.0, le=600_000.0)
    """Extra delay before the stream starts."""
    hang: bool = False
    """Accept the request, then never send a token (until cancelled)."""
    drop_after_tokens: int = Field(-1, ge=-1)
    """Break the stream after this many tokens; -1 never does."""
    malformed_chunk: bool = False
    """Fail as if the upstream sent a chunk that cannot be parsed (INVALID_RESPONSE)."""
    context_length_error: bool = False
    """Refuse as if the prompt exceeded the model's context window (TOKEN_LIMIT_EXCEEDED)."""

    @property
    def active(self) -> bool:
        """Whether any fault is switched on."""
        return self != _NO_FAULTS


_NO_FAULTS = FaultSettings()


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


class TimeoutSettings(BaseModel):
    """Time limits of one upstream call."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    connect_s: float = Field(5.0, gt=0.0, le=600.0)
    """Longest wait for a TCP/TLS connection."""
    first_token_s: float = Field(60.0, gt=0.0, le=3600.0)
    """Longest wait from sending the request to the first stream event."""
    idle_s: float = Field(30.0, gt=0.0, le=3600.0)
    """Longest gap between two stream events."""
    total_s: float = Field(600.0, gt=0.0, le=86_400.0)
    """Longest whole call, first byte to last."""


class PacingSettings(BaseModel):
    """The upstream's quota, so Sluice slows down before the upstream answers 429."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    requests_per_minute: int = Field(0, ge=0)
    """Requests per minute; 0 means unpaced."""
    tokens_per_minute: int = Field(0, ge=0)
    """Tokens (prompt estimate + max_tokens) per minute; 0 means unpaced."""


class HttpBackendSettings(BaseModel):
    """A real LLM API over HTTP: OpenAI Chat Completions (or compatible) or Anthropic."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    kind: Literal["openai", "anthropic"]
    """Wire format: "openai" (Chat Completions, any compatible server) or "anthropic"."""
    base_url: str = Field(pattern=r"^https?://")
    """API root including the version path, e.g. https://api.openai.com/v1."""
    model: str = Field(min_length=1)
    """Upstream model used when a request names none."""
    models: dict[str, str] = Field(default_factory=dict)
    """Model mapping: name in the request -> upstream model name (unlisted names pass as is)."""
    api_key_env: str = ""
    """Name of the environment variable holding the API key (never the key itself)."""
    api_key_file: str = ""
    """Path of a file holding the API key (e.g. a mounted secret); trailing space is stripped."""
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """OpenAI only: the body field for max_tokens (newer OpenAI models want
    max_completion_tokens; most compatible servers take max_tokens)."""
    stream: bool = True
    """Use the streaming API (false: one non-streaming call, replayed as one delta)."""
    max_connections: int = Field(100, ge=1, le=10_000)
    """Pooled connections to this back end."""
    timeouts: TimeoutSettings = TimeoutSettings()
    """Connect, first-token, idle and total timeouts."""
    pacing: PacingSettings = PacingSettings()
    """Requests and tokens per minute allowed by the upstream's quota."""
    anthropic_version: str = "2023-06-01"
    """anthropic-version header (Anthropic only)."""
    default_max_tokens: int = Field(1024, ge=1)
    """max_tokens sent when a request leaves it 0 (Anthropic requires one)."""
    record_content: bool = False
    """Record prompt and completion text on spans (off: they are never recorded)."""

    @model_validator(mode="after")
    def _one_key_source(self) -> HttpBackendSettings:
        if self.api_key_env and self.api_key_file:
            raise ValueError("set at most one of api_key_env and api_key_file")
        return self

    def upstream_model(self, requested: str) -> str:
        """The upstream model name for a requested one (the default when empty)."""
        if not requested:
            return self.model
        return self.models.get(requested, requested)


def _backend_kind(value: Any) -> str:
    kind = value.get("kind", "simulated") if isinstance(value, dict) else value.kind
    return "http" if kind in ("openai", "anthropic") else "simulated"


BackendSettings = Annotated[
    Annotated[SimulatedBackendSettings, Tag("simulated")]
    | Annotated[HttpBackendSettings, Tag("http")],
    Discriminator(_backend_kind),
]
"""One back end: the simulated model (default kind) or an HTTP API."""


def _default_backend() -> SimulatedBackendSettings | HttpBackendSettings:
    return SimulatedBackendSettings()


class ProviderSettings(ServiceSettings):
    """Settings of the provider service."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_PROVIDER_", env_nested_delimiter="__", use_attribute_docstrings=True
    )

    server: ServerSettings = ServerSettings(port=50053, metrics_port=9103)
    """Listeners."""
    security: SecuritySettings = SecuritySettings(
        allow={
            "sluice.provider.v1.ProviderService": ["router"],
            # The back ends' state, for operators diagnosing (docs/runbooks.md).
            "/sluice.provider.v1.ProviderService/ListBackends": ["router", "operator"],
        }
    )
    """Under mtls: only the router may generate (a direct caller would spend the
    gateway's upstream keys with no key, limit or budget of its own); operators may list
    the back ends."""
    backends: dict[str, BackendSettings] = Field(
        default_factory=lambda: {"simulated": _default_backend()}
    )
    """Back ends by name."""
    replicas: int = Field(1, ge=1, le=16)
    """Provider processes `sluice up` starts (the router balances over them)."""
    replica_ports: list[ReplicaPorts] = Field(default_factory=list)
    """Listeners of replicas 2..N; a missing entry uses port + 100*i and metrics_port + 100*i."""
    fault_injection: bool = False
    """Honour per-request faults from the x-sluice-fault header (tests and chaos runs only)."""
    coalescing: CoalescingSettings = CoalescingSettings()
    """Under load, HTTP back ends' tokens gather into fewer messages (provider/coalescing.py)."""

    @model_validator(mode="after")
    def _has_backend(self) -> ProviderSettings:
        if not self.backends:
            raise ValueError("at least one back end must be configured")
        return self
