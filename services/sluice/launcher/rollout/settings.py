"""Settings of `sluice rollout` (YAML section `rollout`, env prefix SLUICE_ROLLOUT_):
the canary's steps and analysis window, the gates' thresholds, the blue-green rollback
window, drain and readiness timeouts, the smoke request and the decision webhook.
docs/deployment.md explains each."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from pydantic import Field, HttpUrl, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RolloutSettings(BaseSettings):
    """How rollouts of the router pool run and when they roll back."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_ROLLOUT_",
        env_nested_delimiter="__",
        use_attribute_docstrings=True,
        extra="forbid",
    )

    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100], min_length=1)
    """Canary: the candidate's share of traffic (percent) at each step; the last is 100."""
    analysis_window_s: float = Field(60.0, gt=0.0, le=86_400.0)
    """Canary: how long each step is held and analysed before the next."""
    analysis_interval_s: float = Field(1.0, gt=0.0, le=60.0)
    """How often the gates are evaluated during a step (a crossing rolls back at once)."""
    min_requests: int = Field(20, ge=1)
    """Requests the candidate must have answered in a step before the gates judge it; a
    step is held until it has."""
    max_error_rate_increase: float = Field(0.01, ge=0.0, le=1.0)
    """Gate `error_rate`: the candidate's share of server errors may exceed the
    baseline's by at most this."""
    max_upstream_error_rate_increase: float = Field(0.01, ge=0.0, le=1.0)
    """Gate `upstream_error_rate`: failed attempts at the model back ends (retried ones
    included), candidate over baseline."""
    max_success_rate_drop: float = Field(0.01, ge=0.0, le=1.0)
    """Gate `success_rate`: the candidate's share of OK answers may fall below the
    baseline's by at most this."""
    max_latency_p99_ratio: float = Field(2.0, ge=1.0)
    """Gate `latency_p99`: candidate p99 at most this times the baseline's …"""
    latency_slack_ms: float = Field(250.0, ge=0.0)
    """… plus this many milliseconds (small samples are noisy)."""
    max_ttft_p99_ratio: float = Field(2.0, ge=1.0)
    """Gate `ttft_p99`: candidate p99 time to first token at most this times the
    baseline's …"""
    ttft_slack_ms: float = Field(150.0, ge=0.0)
    """… plus this many milliseconds."""
    feedback_gate: bool = False
    """Gate `feedback_score` (off by default): users' feedback scores (1..5,
    `POST /v1/feedback`) on the candidate's answers against the baseline's."""
    max_feedback_score_drop: float = Field(0.5, ge=0.0, le=4.0)
    """Gate `feedback_score`: the candidate's mean score may fall below the baseline's
    by at most this (on the 1..5 scale)."""
    min_feedback_samples: int = Field(30, ge=1)
    """Gate `feedback_score`: scores each side must have in the step (the analysis
    window in a cluster) before means are compared; with fewer the gate passes, so a few
    votes never roll a canary back."""
    auto_promote: bool = True
    """Canary: promote once the last step passed; off waits for `sluice rollout promote`."""
    canary_replicas: int = Field(1, ge=1, le=64)
    """Canary: candidate replicas during the steps (scaled to the baseline's count on
    promotion)."""
    rollback_window_s: float = Field(60.0, ge=0.0, le=86_400.0)
    """Blue-green: how long blue stays warm after the switch (`sluice rollout abort`
    switches back within it; `promote` ends it early)."""
    drain_timeout_s: float = Field(30.0, ge=0.0, le=3600.0)
    """A drained replica's in-flight streams may run this long before it is stopped."""
    ready_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    """A new replica must be SERVING, healthy in Envoy and pass its smoke request within
    this, or the rollout rolls back."""
    smoke_api_key_file: Path | None = None
    """File holding the API key of the smoke request (e.g. one made with `sluice keys
    create`); default: the development key when router.api_keys has it and
    router.dev_mode is on (a rollout refuses to start without a key)."""
    smoke_model: str = "default"
    """Model alias the smoke request asks for."""
    webhook_url: HttpUrl | None = None
    """Every decision is POSTed here in Alertmanager's webhook format (none: not sent)."""
    webhook_timeout_s: float = Field(2.0, gt=0.0, le=60.0)
    """How long one webhook POST may take (decisions never wait for it)."""

    @field_validator("steps")
    @classmethod
    def _ascending_to_100(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= step <= 100 for step in steps):
            raise ValueError("each step is a percentage within 1..100")
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError("steps must increase")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100")
        return steps
