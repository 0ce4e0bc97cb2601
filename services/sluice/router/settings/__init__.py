"""Router service settings (YAML section `router`, env prefix SLUICE_ROUTER_).

Every settings model lives in this package and imports only pydantic and core's config,
so loading the suite's configuration does not load the router (tests/unit/launcher/
test_settings_imports.py checks it)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from sluice.core.bounded_json import MAX_DEPTH
from sluice.core.config import SecuritySettings, ServerSettings, ServiceSettings
from sluice.core.resilience.breaker import BreakerSettings
from sluice.core.resilience.bulkhead import BulkheadSettings
from sluice.core.resilience.retry import RetrySettings
from sluice.router.settings.admission import AdmissionSettings
from sluice.router.settings.budgets import BudgetSettings
from sluice.router.settings.feedback import FeedbackSettings
from sluice.router.settings.keys import KeyStoreSettings, StreamCapSettings
from sluice.router.settings.streams import BufferSettings, MultiplexSettings

# sha256("sk-sluice-dev"): the development key of the default configuration.
DEV_KEY_SHA256 = "f54ca937b7efefe972b761a7b8dc7dd477c073770dec53b33fe59a66f6ef9a9f"


class ApiKeySettings(BaseModel):
    """One API key. Only its SHA-256 is stored; the key itself never is."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Stable, non-secret id used in limits, logs and metrics."""
    sha256: str
    """Hex SHA-256 of the key."""
    tenant: str = "default"
    """Tenant that owns the key."""
    tier: str = Field("normal", pattern=r"^(premium|critical|normal|background)$")
    """Priority class of the key's requests."""
    models: list[str] = Field(default_factory=lambda: ["*"])
    """Model aliases the key may use; "*" allows all."""
    max_concurrent_streams: int | None = Field(None, ge=1)
    """Streams the key may hold open at once; None: `streams.per_tier`, else
    `streams.max_concurrent_streams`."""

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value.lower()):
            raise ValueError("must be 64 hex digits (sha256 of the key)")
        return value.lower()


class BackendRef(BaseModel):
    """A back end of the provider service serving a model alias."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    backend: str = Field(min_length=1)
    """Back-end name as configured in the provider service."""
    model: str = ""
    """Model name to ask the back end for; empty uses the back end's default."""


class ModelAliasSettings(BaseModel):
    """A model alias clients send as `model`."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    backends: list[BackendRef] = Field(min_length=1)
    """Back ends in fallback order; the first is the primary."""
    default_max_tokens: int = Field(256, ge=1, le=32_768)
    """max_tokens when a request leaves it 0."""
    simplified_text: str = ""
    """Degraded answer served (marked SIMPLIFIED) when every back end and the cache
    failed; empty disables the step."""


class BackendPolicy(BaseModel):
    """Resilience settings of one back end (each falls back to the router-wide one)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    breaker: BreakerSettings | None = None
    """Circuit breaker."""
    bulkhead: BulkheadSettings | None = None
    """Concurrency pool."""


class ResponseCacheSettings(BaseModel):
    """The response cache (fallback step CACHE): exact match on the normalised request."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Store completed answers and serve them when every back end failed."""
    max_entries: int = Field(10_000, ge=1)
    """LRU capacity."""
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    """Estimated bytes the in-memory cache may hold (answers may be up to
    `max_entry_chars` long, so `max_entries` alone does not bound memory)."""
    ttl_s: float = Field(3600.0, gt=0.0)
    """How long an answer stays servable."""
    max_entry_chars: int = Field(65_536, ge=1)
    """Longer answers are not cached."""
    redis_url: str = ""
    """redis://host:port/db to share the cache across router replicas; empty keeps it in memory."""


class ResilienceSettings(BaseModel):
    """Retries, breakers, bulkheads, deadlines and load shedding (docs/resilience.md)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    retry: RetrySettings = RetrySettings()
    """Retries of a back end before moving down the chain."""
    breaker: BreakerSettings = BreakerSettings()
    """Default circuit breaker of every back end."""
    bulkhead: BulkheadSettings = BulkheadSettings()
    """Default concurrency pool of every back end."""
    backends: dict[str, BackendPolicy] = Field(default_factory=dict)
    """Per-back-end overrides by back-end name."""
    cache: ResponseCacheSettings = ResponseCacheSettings()
    """Response cache."""
    min_deadline_ms: int = Field(50, ge=0)
    """Requests with less time left than this are refused at once (DEADLINE_EXCEEDED)."""
    memory_limit_mb: int = Field(0, ge=0)
    """Shed new requests (OUT_OF_MEMORY) while the router's RSS exceeds this; 0 = off."""
    limiter_fail_closed: bool = False
    """Refuse requests when the limiter cannot decide (default: local approximate limit)."""
    local_limit_rps: float = Field(100.0, gt=0.0)
    """Approximate per-key request rate the router enforces itself while the limiter is down."""


HTTP_HEALTH_PATH = "/healthz"
"""The HTTP listener's health check (Envoy's, launcher/envoy/clusters.py): 200 while the
router serves, 503 once it drains (router/openai_http.py). The edge routes no client here."""


class HttpApiSettings(BaseModel):
    """The OpenAI-compatible HTTP listener (Envoy routes /v1/chat/completions here)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Serve the OpenAI-compatible API."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(8090, ge=0, le=65535)
    """HTTP port; 0 picks a free one."""
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Largest request body accepted."""
    max_json_depth: int = Field(MAX_DEPTH, ge=2, le=1000)
    """Deepest nesting of arrays and objects in a request body (core/bounded_json.py)."""


class ConverseSettings(BaseModel):
    """The bidirectional Converse RPC and its WebSocket bridge at /v1/ws (router/converse.py)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    max_history_turns: int = Field(16, ge=0, le=1024)
    """Completed turns a stream remembers for `follows_turn_id` (oldest evicted first)."""
    max_history_chars: int = Field(1_000_000, ge=0)
    """Total message characters a stream's history may hold (oldest turns evicted first)."""
    max_turns: int = Field(10_000, ge=1)
    """Turn ids one stream may use (each is remembered so it cannot be reused)."""
    websocket_enabled: bool = True
    """Serve the WebSocket bridge at /v1/ws on the HTTP listener."""
    websocket_idle_timeout_s: float = Field(120.0, gt=0.0)
    """Close a WebSocket (1001) after this long with no client frame and no turn running."""
    websocket_max_message_bytes: int = Field(1024 * 1024, ge=1024)
    """Largest client frame accepted; a bigger one closes the socket (1009)."""
    websocket_heartbeat_s: float = Field(30.0, gt=0.0)
    """Ping interval that detects a peer that went away without closing."""


class RouterSettings(ServiceSettings):
    """Settings of the router service."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_ROUTER_", env_nested_delimiter="__", use_attribute_docstrings=True
    )

    server: ServerSettings = ServerSettings(port=50051, metrics_port=9101)
    """Listeners."""
    security: SecuritySettings = SecuritySettings(
        allow={
            "sluice.router.v1.RouterService": ["envoy", "operator"],
            # The HTTP listener (OpenAI-compatible API, WebSocket, web page): router/http_tls.py.
            "http": ["envoy", "operator"],
            # Erasure of cached answers (router/admin.py): operators only.
            "sluice.router.v1.RouterAdminService": ["operator"],
            "/sluice.router.v1.RouterAdminService/EraseUser": ["operator"],
        }
    )
    """Under mtls: clients come through Envoy; operators may call directly (grpcurl) and
    alone may call the admin service. The key `http` is the HTTP listener's list."""
    limiter_address: str = "127.0.0.1:50052"
    """host:port of the limiter service."""
    provider_address: str = "127.0.0.1:50053"
    """host:port of the provider service."""
    limiter_timeout_ms: int = Field(250, ge=1, le=60_000)
    """Longest wait for an admission decision before failing open."""
    limiter_lease_requests: int = Field(64, ge=0, le=10_000)
    """Request permits to ask the limiter for in advance (a lease), so that a busy
    subject's next requests are admitted without a limiter call; 0 = a call per request.
    The limiter grants them only with ample headroom on every limit (leases.py)."""
    api_keys: list[ApiKeySettings] = Field(
        default_factory=lambda: [ApiKeySettings(id="dev", sha256=DEV_KEY_SHA256)]
    )
    """Accepted API keys (hashed). The development key (the default) is accepted only
    with `dev_mode`."""
    dev_mode: bool = False
    """Accept the public development key sk-sluice-dev (`sluice up --dev`). Never on an
    exposed edge: `sluice up` refuses to bind a non-loopback address with it."""
    keys: KeyStoreSettings = KeyStoreSettings()
    """The key store managed by `sluice keys` (HMAC-SHA256 digests, expiry, rotation)."""
    streams: StreamCapSettings = StreamCapSettings()
    """Concurrent streams per API key (router/stream_caps.py)."""
    models: dict[str, ModelAliasSettings] = Field(
        default_factory=lambda: {
            "default": ModelAliasSettings(backends=[BackendRef(backend="simulated")])
        }
    )
    """Model aliases by name."""
    max_tokens_limit: int = Field(32_768, ge=1)
    """Largest max_tokens a request may ask for."""
    max_messages: int = Field(256, ge=1)
    """Most messages one request may carry."""
    max_prompt_chars: int = Field(1_000_000, ge=1)
    """Largest total message length in characters."""
    max_tools: int = Field(128, ge=0)
    """Most tools one request may declare."""
    max_tool_parameters_bytes: int = Field(65_536, ge=2)
    """Largest JSON Schema of one tool's parameters, in bytes."""
    progress_interval_ms: int = Field(1000, ge=10)
    """Gap between two progress events of a stream."""
    request_timeout_s: float = Field(300.0, gt=0.0)
    """Deadline applied when the caller sets none."""
    whole_answers: bool = True
    """Ask back ends for a non-streaming client's answer in one piece (one upstream JSON
    body, one provider message) instead of a stream; such an attempt is bounded by the
    breaker's `whole_answer_timeout` instead of its first-token `timeout`."""
    buffer: BufferSettings = BufferSettings()
    """The adaptive buffer between each provider stream and its client (docs/architecture.md)."""
    resilience: ResilienceSettings = ResilienceSettings()
    """Retries, breakers, bulkheads, cache, deadlines, load shedding."""
    provider_multiplex: MultiplexSettings = MultiplexSettings()
    """Provider streams as frames on a few long-lived calls (router/provider_streams.py)."""
    http_api: HttpApiSettings = HttpApiSettings()
    """The OpenAI-compatible HTTP API (router/openai_http.py)."""
    admission: AdmissionSettings = AdmissionSettings()
    """Priority classes, the fair queue per back end, adaptive concurrency, shedding."""
    budgets: BudgetSettings = BudgetSettings()
    """Currency budgets per API key per period, from per-model prices."""
    converse: ConverseSettings = ConverseSettings()
    """The Converse RPC's history bounds and its WebSocket bridge (/v1/ws)."""
    feedback: FeedbackSettings = FeedbackSettings()
    """User feedback on answers (`POST /v1/feedback` on the HTTP listener)."""

    @model_validator(mode="after")
    def _unique_key_ids(self) -> RouterSettings:
        ids = [key.id for key in self.api_keys]
        if len(ids) != len(set(ids)):
            raise ValueError("api_keys ids must be unique")
        return self
