"""User feedback on answers (`POST /v1/feedback`, router/feedback.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FeedbackSettings(BaseModel):
    """Feedback scores as a canary signal, and the recent requests that may be scored."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Serve `POST /v1/feedback` on the HTTP listener and remember which key made each
    recent request (the only per-request cost: one dictionary insert)."""
    recent_requests: int = Field(50_000, ge=100, le=5_000_000)
    """Most request ids remembered for scoring (oldest forgotten first). Each holds about
    120 bytes with the 36-character ids Envoy assigns (ids are at most 64 characters):
    6 MB at the default (loadtest/feedback_recent.py)."""
    window_s: float = Field(3600.0, ge=10.0, le=7 * 86_400.0)
    """How long after its answer a request may be scored: at least this and at most a
    third longer, unless `recent_requests` newer answers pushed it out first."""
    max_comment_chars: int = Field(2000, ge=0, le=100_000)
    """Longest optional `comment` accepted (it is checked, then dropped: never stored,
    logged or counted, since it may hold personal data)."""
