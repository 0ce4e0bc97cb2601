"""Settings: one YAML file with a section per service, overridden by environment variables.

Precedence, highest first: explicit keyword arguments (tests), environment variables
(``SLUICE_<SERVICE>_<FIELD>``, nested fields joined by ``__``), the service's YAML
section, the top-level shared sections (``tracing``), field defaults. A bad value stops
start-up with a message naming the field.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sluice.core.audit import AuditSettings
from sluice.core.config_error import ConfigError as ConfigError  # noqa: PLC0414 - re-export
from sluice.core.privacy import PrivacySettings
from sluice.core.telemetry.error_reporting import ErrorReportingSettings

CONFIG_ENV = "SLUICE_CONFIG"
SHARED_SECTIONS = ("tracing", "security", "audit", "privacy")


MIN_SAMPLING_RATIO = 1e-4
"""The smallest ratio a trace is taken to be sampled with. The tracestate entry that
carries it comes from clients too, and statistics weight each span by 1/ratio
(telemetry/stats.py): a claimed `r:1e-300` would count one request as 1e300. So a carried
ratio is clamped to [MIN_SAMPLING_RATIO, 1] (core/telemetry/tracing.py) and a configured
one is 0 or at least this."""


class TracingSettings(BaseModel):
    """OpenTelemetry export settings, shared by every service unless overridden."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Export spans at all."""
    endpoint: str = "127.0.0.1:4317"
    """OTLP/gRPC endpoint (host:port) of the telemetry service."""
    sample_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Head-sampling ratio for new traces; children follow their parent's decision (a
    gRPC caller's sampled `traceparent` is traced whole; through Envoy, Envoy decides at
    this ratio, docs/observability.md). 0.1 keeps tracing under 10% of throughput;
    failures are exported whatever the ratio."""

    keep_errors: bool = True
    """Export the failed RPC spans of traces head sampling left out (rebuilt when the
    call fails; nothing is recorded while it runs); the telemetry service's tail sampler
    keeps them. Off: their errors are not seen."""
    export_delay_ms: int = Field(500, ge=10, le=60_000)
    """Longest time a finished span waits in the batch before export."""
    max_queue_size: int = Field(8192, ge=64)
    """Spans buffered before new ones are dropped (dropping never blocks serving)."""

    @field_validator("sample_ratio")
    @classmethod
    def _ratio_is_zero_or_weighable(cls, ratio: float) -> float:
        if 0.0 < ratio < MIN_SAMPLING_RATIO:
            raise ValueError(f"must be 0 or at least {MIN_SAMPLING_RATIO}")
        return ratio


class SecuritySettings(BaseModel):
    """Mutual TLS between the suite's parts, and who may call what (docs/security.md).

    Shared by every service (YAML section `security`), each service adding its own
    `allow` list; paths may differ per service in its own section.
    """

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    mtls: bool = True
    """Serve gRPC only over mutual TLS, call the other services and export spans over it,
    and authorize each call by the caller's certificate (`allow`). On by default (`sluice
    up` makes the certificates). `false` is plaintext: any process that reaches a port can
    generate on the provider, drain any key's limits and read traces (docs/security.md)."""
    certs_dir: Path | None = None
    """Directory of `ca.pem`, `<identity>.pem` and `<identity>-key.pem` (what `sluice
    certs` writes; `sluice up` creates `<run-dir>/certs` when mtls is on and nothing is
    configured). The paths below override single files."""
    ca_path: Path | None = None
    """PEM bundle of the CA(s) whose certificates are trusted (callers and services)."""
    cert_path: Path | None = None
    """PEM certificate chain of this service's identity."""
    key_path: Path | None = None
    """PEM private key of that certificate."""
    identity: str = Field("", pattern=r"^[a-z0-9_.-]*$")
    """This part's identity, as its certificate names it (`spiffe://sluice/<identity>` or
    CN); empty means the service's name."""
    allow: dict[str, list[str]] = Field(default_factory=dict)
    """Identities allowed to call, by gRPC method (`/pkg.Service/Method`) or service
    (`pkg.Service`); `*` is any identity the CA vouches for. A method matched by neither
    is refused (PERMISSION_DENIED). Each service sets its own defaults; health checks are
    open to any identity and reflection to `operator` unless listed here."""


class LogExportSettings(BaseModel):
    """Optional OTLP export of the log, beside the JSON lines on stderr
    (docs/observability.md, "Connect your backend")."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    endpoint: str = ""
    """OTLP/gRPC endpoint (host:port, plaintext) of a logs back end, e.g. an OpenTelemetry
    Collector; empty (the default) exports nothing. Each record carries the trace and
    span id of the span it was logged in."""
    level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    """Minimum level exported."""
    export_delay_ms: int = Field(1000, ge=10, le=60_000)
    """Longest time a record waits in the batch before export."""
    max_queue_size: int = Field(8192, ge=64)
    """Records buffered before new ones are dropped (dropping never blocks logging)."""
    timeout_s: float = Field(5.0, gt=0.0, le=60.0)
    """Deadline of one export, retries included (also bounds the flush at exit)."""


class MetricsExportSettings(BaseModel):
    """Optional push of the metrics /metrics serves, for stacks without Prometheus
    (docs/observability.md, "Connect your backend")."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    protocol: Literal["otlp_grpc", "azure_monitor"] = "otlp_grpc"
    """`otlp_grpc` (to `endpoint`) or `azure_monitor` (Application Insights metric
    telemetry, to the connection string's IngestionEndpoint)."""
    endpoint: str = ""
    """otlp_grpc: OTLP/gRPC endpoint (host:port, plaintext), e.g. an OpenTelemetry
    Collector; empty (the default) pushes nothing unless the protocol is azure_monitor."""
    connection_string_env: str = ""
    """azure_monitor: name of the environment variable holding the connection string."""
    connection_string_file: Path | None = None
    """azure_monitor: file holding the connection string (read once at start-up)."""
    interval_s: float = Field(15.0, ge=0.1, le=3_600.0)
    """Time between pushes (a missed push loses no counter increase: otlp_grpc sends
    cumulative totals, azure_monitor the increase since the last accepted push)."""
    timeout_s: float = Field(5.0, gt=0.0, le=60.0)
    """Deadline of one push attempt."""
    max_attempts: int = Field(3, ge=1, le=10)
    """azure_monitor: attempts per push (refused, timed out, 429, 503...) before it is
    dropped and counted; the final push at shutdown makes one."""
    backoff_initial_s: float = Field(0.5, gt=0.0, le=60.0)
    """azure_monitor: delay before the first retry; doubled per retry."""
    backoff_max_s: float = Field(5.0, gt=0.0, le=300.0)
    """azure_monitor: longest delay between retries; also caps a receiver's Retry-After."""

    @model_validator(mode="after")
    def _destination_given(self) -> MetricsExportSettings:
        if (
            self.protocol == "azure_monitor"
            and not self.connection_string_env
            and self.connection_string_file is None
        ):
            raise ValueError("azure_monitor needs connection_string_env or connection_string_file")
        return self

    @property
    def enabled(self) -> bool:
        """Whether anything is pushed at all."""
        return self.protocol == "azure_monitor" or bool(self.endpoint)


class ServerSettings(BaseModel):
    """How a service's gRPC server listens and stops."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(ge=0, le=65535)
    """gRPC port; 0 picks a free one."""
    metrics_port: int = Field(ge=0, le=65535)
    """Prometheus /metrics port; 0 picks a free one."""
    shutdown_grace_s: float = Field(15.0, ge=0.0, le=600.0)
    """How long in-flight RPCs may run after SIGTERM before they are cancelled."""
    max_concurrent_streams: int = Field(10_000, ge=1)
    """HTTP/2 streams allowed per connection."""
    pool: str = Field("", pattern=r"^[a-z0-9-]{0,32}$")
    """Rollout pool of this process (e.g. `green`); when set, every series on its
    /metrics carries a `pool` label, so a canary is compared with its baseline
    (docs/deployment.md). `sluice rollout` sets it for the processes it starts."""


class ServiceSettings(BaseSettings):
    """Base of every service's settings: server, tracing, logging."""

    # So that the docstrings below are these fields' descriptions in every subclass
    # (docs/reference/configuration.md is generated from them).
    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    server: ServerSettings
    """gRPC and metrics listeners."""
    tracing: TracingSettings = TracingSettings()
    """OpenTelemetry export."""
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    """Minimum level of the JSON log."""
    log_export: LogExportSettings = LogExportSettings()
    """Optional OTLP export of the log records."""
    metrics_export: MetricsExportSettings = MetricsExportSettings()
    """Optional push of the metrics (OTLP or Azure Monitor)."""
    error_reporting: ErrorReportingSettings = ErrorReportingSettings()
    """Optional Sentry reporting of server-side failures."""
    security: SecuritySettings = SecuritySettings()
    """Mutual TLS and per-method authorization of callers (off by default)."""
    audit: AuditSettings = AuditSettings()
    """The append-only audit log of requests and admin actions (off by default)."""
    privacy: PrivacySettings = PrivacySettings()
    """PII redaction in what is recorded (off by default)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first; pydantic-settings deep-merges them, so a source may set one
        # nested field (e.g. server.port) and keep the others.
        return (init_settings, env_settings, _FileValuesSource(settings_cls))


# The YAML values (with defaults of nested models under them) for the settings object
# being built right now; load_settings sets it around construction.
_file_values: ContextVar[dict[str, Any]] = ContextVar("sluice_file_values", default={})  # noqa: B039


class _FileValuesSource(PydanticBaseSettingsSource):
    """Lowest-priority source: the config file's section for this service."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _file_values.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get())


def _nested_defaults(settings_cls: type[BaseSettings]) -> dict[str, Any]:
    # A file or env var that sets only server.port must keep the other server defaults.
    defaults: dict[str, Any] = {}
    for name, info in settings_cls.model_fields.items():
        if isinstance(info.default, BaseModel):
            defaults[name] = info.default.model_dump()
    return defaults


S = TypeVar("S", bound=ServiceSettings)


def read_config_file(path: Path | str | None = None) -> dict[str, Any]:
    """Read the suite's YAML file (``$SLUICE_CONFIG`` when path is None; {} when neither)."""
    chosen = path if path is not None else os.environ.get(CONFIG_ENV)
    if not chosen:
        return {}
    try:
        data = yaml.safe_load(Path(chosen).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read config file {chosen}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {chosen} is not UTF-8 text: {err.reason}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {chosen} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {chosen} must hold a mapping of sections")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def section_data(data: dict[str, Any], section: str) -> dict[str, Any]:
    """The YAML values for one service: shared sections first, its own section on top."""
    values: dict[str, Any] = {k: data[k] for k in SHARED_SECTIONS if isinstance(data.get(k), dict)}
    own = data.get(section) or {}
    if not isinstance(own, dict):
        raise ConfigError(f"config section '{section}' must be a mapping")
    return deep_merge(values, own)


def describe_validation_error(section: str, err: ValidationError) -> str:
    """One line per bad field, each naming the field by its dotted path."""
    lines = []
    for problem in err.errors():
        path = ".".join(str(part) for part in (section, *problem["loc"]))
        given = problem.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{path}: {problem['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(
    settings_cls: type[S],
    section: str,
    *,
    path: Path | str | None = None,
    data: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> S:
    """Build validated settings for one service; raises ConfigError naming any bad field."""
    raw = data if data is not None else read_config_file(path)
    token = _file_values.set(deep_merge(_nested_defaults(settings_cls), section_data(raw, section)))
    try:
        return settings_cls(**(overrides or {}))
    except ValidationError as err:
        raise ConfigError(describe_validation_error(section, err)) from err
    finally:
        _file_values.reset(token)
