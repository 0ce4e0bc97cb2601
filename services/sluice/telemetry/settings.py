"""Telemetry service settings (YAML section `telemetry`, env prefix SLUICE_TELEMETRY_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from sluice.core.config import SecuritySettings, ServerSettings, ServiceSettings

MIB = 1024 * 1024


class TailSamplingSettings(BaseModel):
    """Tail-based sampling: one keep/drop decision per whole trace."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    decision_wait_s: float = Field(2.0, gt=0.0, le=300.0)
    """A trace is decided once no span of it arrived for this long."""
    keep_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Share of traces kept that neither failed nor were slow (by trace id, like OTel).
    1.0 suits development (every trace can be looked up); production sets e.g. 0.1."""
    slow_threshold_ms: float = Field(2_000.0, ge=0.0)
    """Traces lasting at least this long (first start to last end) are always kept."""
    max_pending_traces: int = Field(50_000, ge=1)
    """Traces waiting for a decision; beyond this the least recently active is decided."""
    max_pending_bytes: int = Field(64 * MIB, ge=MIB)
    """Estimated bytes of the spans waiting for a decision (from their serialized size,
    telemetry/memory.py); beyond this the least recently active traces are decided."""


ForwardProtocol = Literal["otlp_grpc", "otlp_http", "zipkin", "azure_monitor"]


class ForwardSettings(BaseModel):
    """One back end kept traces are forwarded to; see docs/observability.md
    ("Connect your backend") for each protocol's settings as tested."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    protocol: ForwardProtocol = "otlp_grpc"
    """Wire format: `otlp_grpc` (Jaeger, Tempo, a collector), `otlp_http` (protobuf POST),
    `zipkin` (Zipkin v2 JSON) or `azure_monitor` (Application Insights track envelopes)."""
    endpoint: str = ""
    """Where to send. otlp_grpc: host:port (plaintext). otlp_http: the full URL, e.g.
    http://tempo:4318/v1/traces. zipkin: the full URL, e.g. http://zipkin:9411/api/v2/spans.
    azure_monitor: leave empty (the connection string's IngestionEndpoint is used)."""
    headers: dict[str, str] = {}
    """Extra HTTP headers (otlp_http, zipkin) or gRPC metadata (otlp_grpc), e.g. Tempo's
    tenant header X-Scope-OrgID."""
    connection_string_env: str = ""
    """azure_monitor: name of the environment variable holding the connection string."""
    connection_string_file: Path | None = None
    """azure_monitor: file holding the connection string (read once at start-up)."""
    max_buffer_spans: int = Field(20_000, ge=1)
    """Spans buffered for this endpoint; the oldest are dropped (and counted) beyond."""
    max_buffer_bytes: int = Field(16 * MIB, ge=MIB)
    """Estimated bytes of the spans buffered for this endpoint (telemetry/memory.py); the
    oldest are dropped (and counted) beyond. Spans may be large: the count alone does not
    bound memory while the endpoint is down."""
    max_batch_spans: int = Field(512, ge=1)
    """Spans per export request."""
    timeout_s: float = Field(5.0, gt=0.0, le=60.0)
    """Deadline of one export attempt."""
    backoff_initial_s: float = Field(0.1, gt=0.0, le=60.0)
    """Delay before the first retry; doubled per retry (with jitter)."""
    backoff_max_s: float = Field(5.0, gt=0.0, le=300.0)
    """Longest delay between retries; also caps a receiver's Retry-After."""
    max_attempts: int = Field(5, ge=1, le=100)
    """Attempts per batch before it is dropped (counted as failed)."""

    @model_validator(mode="after")
    def _destination_given(self) -> ForwardSettings:
        if self.protocol == "azure_monitor":
            if not self.connection_string_env and self.connection_string_file is None:
                raise ValueError(
                    "azure_monitor needs connection_string_env or connection_string_file"
                )
        elif not self.endpoint:
            raise ValueError(f"endpoint is required for protocol {self.protocol}")
        elif self.protocol != "otlp_grpc" and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint of {self.protocol} must be an http(s):// URL")
        return self

    @property
    def name(self) -> str:
        """The `endpoint` label of this destination's metrics."""
        source = self.connection_string_env or self.connection_string_file
        return self.endpoint or f"azure_monitor:{source}"


class StatsSettings(BaseModel):
    """Sliding-window statistics (GetStats, GetServiceGraph, GetBreakdown, /metrics)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    window_s: int = Field(60, ge=1, le=3_600)
    """Length of the sliding window, seconds (also the longest a query may ask for)."""
    apdex_t_ms: float = Field(500.0, gt=0.0)
    """Apdex threshold T: satisfied at most T, tolerating at most 4T."""
    max_samples: int = Field(500_000, ge=100)
    """Span samples held for the window at most (the oldest go first)."""
    max_bytes: int = Field(32 * MIB, ge=MIB)
    """Estimated bytes of the samples held for the window at most (the oldest go first)."""


class TelemetrySettings(ServiceSettings):
    """Settings of the telemetry service."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_TELEMETRY_", env_nested_delimiter="__", use_attribute_docstrings=True
    )

    server: ServerSettings = ServerSettings(port=4317, metrics_port=9104)
    """Listeners (4317 is the standard OTLP/gRPC port)."""
    security: SecuritySettings = SecuritySettings(
        allow={
            "opentelemetry.proto.collector.trace.v1.TraceService": [
                "router",
                "limiter",
                "provider",
                "telemetry",
                "envoy",
            ],
            # Traces hold user and session ids (and prompts when recorded).
            "sluice.telemetry.v1.TelemetryService": ["operator"],
            # Erasure deletes data: named on its own so a wider service entry never opens it.
            "/sluice.telemetry.v1.TelemetryService/EraseUser": ["operator"],
        }
    )
    """Under mtls: every part of the suite may export spans; only operators query."""
    max_traces: int = Field(10_000, ge=1)
    """Recent kept traces stored; the oldest are dropped beyond this."""
    max_store_bytes: int = Field(64 * MIB, ge=MIB)
    """Estimated bytes of the stored traces (from their spans' serialized size,
    telemetry/memory.py); the oldest traces are dropped beyond this. Bounds the store's
    memory whatever the traces' shape, where `max_traces` alone does not."""
    max_spans_per_trace: int = Field(2_000, ge=1)
    """Spans kept per trace; later ones are dropped and counted."""
    ingest_queue_spans: int = Field(100_000, ge=1)
    """Spans received but not yet processed; an export that does not fit is rejected
    (reported in the OTLP partial_success and counted), never waited for."""
    sampling: TailSamplingSettings = TailSamplingSettings()
    """Tail-based sampling."""
    forward: list[ForwardSettings] = []
    """Back ends kept traces are forwarded to, several at once; each has its own buffer,
    retries and dropped-span counts (env: SLUICE_TELEMETRY_FORWARD as a JSON list)."""
    stats: StatsSettings = StatsSettings()
    """Sliding-window statistics."""
