"""Limiter service settings (YAML section `limiter`, env prefix SLUICE_LIMITER_)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from sluice.core.config import SecuritySettings, ServerSettings, ServiceSettings
from sluice.limiter.algorithms import AlgorithmName

Scope = Literal["global", "user", "api_key", "tenant", "endpoint", "model"]
Unit = Literal["requests", "tokens"]


class BucketSettings(BaseModel):
    """A token bucket: `capacity` requests of burst, refilled at `refill_per_second`."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    capacity: float = Field(1000.0, gt=0.0)
    """Largest burst, in requests."""
    refill_per_second: float = Field(500.0, gt=0.0)
    """Sustained rate, in requests per second."""


class LimitSettings(BaseModel):
    """The numbers of one limit; which of them apply depends on the algorithm."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    limit: float = Field(gt=0.0)
    """Token bucket: capacity (largest burst). Windows: units allowed per window."""
    refill_per_second: float | None = Field(None, gt=0.0)
    """Token bucket only: sustained rate in units per second (default: limit / window_s)."""
    window_s: float = Field(1.0, gt=0.0)
    """Windows: window length in seconds. Token bucket: the period `limit` refers to when
    `refill_per_second` is not given."""

    def rate(self) -> float:
        """The token bucket's refill rate."""
        return self.refill_per_second or self.limit / self.window_s


class PolicySettings(LimitSettings):
    """One configured limit: what it counts, per what subject, with which algorithm."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Identifier: appears in refusals (QuotaFailure, ErrorInfo `policy`) and metrics."""
    scope: Scope = "api_key"
    """Whose usage is counted together: everyone (`global`) or per user, API key, tenant,
    endpoint (RPC or HTTP route) or model. A request lacking the field is not limited by
    a per-field policy (`global` catches it)."""
    unit: Unit = "requests"
    """What is counted: requests, or LLM tokens (reserved at Acquire, reconciled later)."""
    algorithm: AlgorithmName = "token_bucket"
    """token_bucket, fixed_window, sliding_log or sliding_counter (see the README)."""
    match: dict[Scope, list[str]] = Field(default_factory=dict)
    """Only requests whose fields take one of these values, e.g. {model: [gpt-4o]}."""
    overrides: dict[str, LimitSettings] = Field(default_factory=dict)
    """Different numbers for particular subjects (e.g. one API key id)."""


class RedisSettings(BaseModel):
    """The shared Redis-protocol store."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    url: str = "redis://127.0.0.1:6379/0"
    """Server URL (redis:// or rediss://)."""
    key_prefix: str = "sluice:rl:"
    """Prefix of every key the limiter writes."""
    timeout_s: float = Field(0.25, gt=0.0, le=10.0)
    """Connect and per-call timeout; beyond it the decision is taken locally."""
    retry_interval_s: float = Field(1.0, gt=0.0, le=300.0)
    """While Redis is unreachable, how often a decision tries it again."""
    replicas: int = Field(1, ge=1)
    """Limiter replicas sharing the store: each takes 1/replicas of every limit while
    Redis is unreachable."""
    use_server_time: bool = True
    """Take `now` from the Redis server (one clock for all replicas) rather than the
    replica's own clock."""


class LeaseSettings(BaseModel):
    """Leases: request permits granted in advance along with an Acquire that asks for them
    (`lease_requests`), so the caller admits its next requests without a call."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Grant leases at all (off: `lease_requests` is ignored)."""
    max_requests: int = Field(64, ge=0)
    """Most permits one lease carries (0: no leases). Unused permits lapse, so a lease
    holder can leave at most this many per ttl unused."""
    ttl_s: float = Field(1.0, gt=0.0, le=60.0)
    """Longest a lease lasts; windows cut it at the end of the current window."""
    min_headroom: float = Field(0.5, ge=0.0, le=1.0)
    """Share of each limit that must stay free after the lease (0.5: a lease never takes
    a limit below half), so leases only happen where the limit is far from binding."""


def _default_edge_policies() -> list[PolicySettings]:
    return [
        PolicySettings(name="edge_global", scope="global", limit=5000.0, refill_per_second=5000.0),
        PolicySettings(name="edge_per_key", scope="api_key", limit=1000.0, refill_per_second=500.0),
    ]


class EdgeSettings(BaseModel):
    """Edge limits Envoy asks for through `envoy.service.ratelimit.v3.RateLimitService`.

    Envoy sends one descriptor per rule: `generic_key=global` always (so a request
    without an API key is still limited), `api_key=<presented key>` when a key is
    present, and `route=<route name>`. Each descriptor is checked against the policies
    of its scope (global, api_key, endpoint), all at once, all-or-nothing.
    """

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    domain: str = Field("sluice-edge", min_length=1)
    """The rate limit domain Envoy's filter sends; other domains are answered OK."""
    policies: list[PolicySettings] = Field(default_factory=_default_edge_policies)
    """Request limits (scope global, api_key or endpoint) applied at the edge. API keys
    are keyed by the first 16 hex digits of their SHA-256 (overrides use that too)."""

    @model_validator(mode="after")
    def _edge_scopes(self) -> Self:
        for policy in self.policies:
            if policy.scope not in ("global", "api_key", "endpoint"):
                raise ValueError(
                    f"edge policy {policy.name}: scope must be global, api_key or endpoint"
                )
            if policy.unit != "requests":
                raise ValueError(f"edge policy {policy.name}: unit must be requests")
        return self


class LimiterSettings(ServiceSettings):
    """Settings of the limiter service."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_LIMITER_", env_nested_delimiter="__", use_attribute_docstrings=True
    )

    server: ServerSettings = ServerSettings(port=50052, metrics_port=9102)
    """Listeners."""
    security: SecuritySettings = SecuritySettings(
        allow={
            "/sluice.limiter.v1.LimiterService/Acquire": ["router"],
            "/sluice.limiter.v1.LimiterService/Reconcile": ["router"],
            "/sluice.limiter.v1.LimiterService/Spend": ["router"],
            "envoy.service.ratelimit.v3.RateLimitService": ["envoy"],
            # Any other (administrative) limiter method: operators only.
            "sluice.limiter.v1.LimiterService": ["operator"],
        }
    )
    """Under mtls: only the router takes and settles capacity; only Envoy asks the edge
    rate limit service; anything else the limiter serves is for operators."""
    per_key: BucketSettings = BucketSettings()
    """The request bucket every API key gets unless overridden (the default policy
    `per_key`, used when `policies` is empty)."""
    key_overrides: dict[str, BucketSettings] = Field(default_factory=dict)
    """Buckets for particular API key ids (in the default policy)."""
    policies: list[PolicySettings] = Field(default_factory=list)
    """Configured limits; every request is checked against all that match it, at once.
    Empty: the single `per_key` request bucket above."""
    backend: Literal["memory", "redis"] = "memory"
    """Where limit state lives: this process, or a Redis shared by all replicas."""
    redis: RedisSettings = RedisSettings()
    """The Redis store (backend `redis`)."""
    max_tracked_keys: int = Field(100_000, ge=1)
    """Limit states kept in memory; the least recently used are forgotten beyond this."""
    max_tracked_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    """Estimated bytes of the in-memory limit states, reservations and spend (keys carry
    caller-chosen values, so `max_tracked_keys` alone does not bound memory)."""
    reservation_ttl_s: float = Field(3600.0, gt=0.0)
    """How long a token reservation can still be reconciled."""
    edge: EdgeSettings = EdgeSettings()
    """Edge limits served to Envoy (RLS)."""
    lease: LeaseSettings = LeaseSettings()
    """Request permits granted in advance (AcquireRequest.lease_requests)."""

    @model_validator(mode="after")
    def _unique_policy_names(self) -> Self:
        names = [policy.name for policy in [*self.policies, *self.edge.policies]]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"policies: duplicate names {duplicated}")
        return self

    def effective_policies(self) -> list[PolicySettings]:
        """The configured policies, or the default per-key request bucket."""
        if self.policies:
            return list(self.policies)
        return [
            PolicySettings(
                name="per_key",
                scope="api_key",
                unit="requests",
                algorithm="token_bucket",
                limit=self.per_key.capacity,
                refill_per_second=self.per_key.refill_per_second,
                overrides={
                    key: LimitSettings(limit=b.capacity, refill_per_second=b.refill_per_second)
                    for key, b in self.key_overrides.items()
                },
            )
        ]
