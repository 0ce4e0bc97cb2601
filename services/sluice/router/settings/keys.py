"""The key store and per-key stream caps (router/keystore.py, router/stream_caps.py)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class KeyStoreSettings(BaseModel):
    """API keys managed by `sluice keys` (docs/security.md), beside `router.api_keys`."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    store_path: Path | None = None
    """JSON file of the managed keys (written by `sluice keys`, read by the router);
    None: only `router.api_keys` are accepted."""
    secret_path: Path | None = None
    """The server secret the stored digests are keyed with (HMAC-SHA256); created
    owner-only on first use. None: `<store_path>.secret` beside the store."""
    reload_interval_s: float = Field(1.0, gt=0.0, le=60.0)
    """How often the router looks for a changed store file: a revoked key stops working
    within this, without a restart."""

    def secret_file(self) -> Path | None:
        """Where the server secret is (None without a store)."""
        if self.secret_path is not None:
            return self.secret_path
        if self.store_path is None:
            return None
        return self.store_path.with_name(self.store_path.name + ".secret")


class StreamCapSettings(BaseModel):
    """How many streams one API key may hold open at once, across every transport."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    max_concurrent_streams: int = Field(256, ge=1)
    """Default cap per key: Generate and Complete calls, OpenAI-compatible requests, SSE
    streams, and Converse streams (gRPC or WebSocket, one each for their whole life)."""
    per_tier: dict[str, int] = Field(default_factory=dict)
    """Cap by the key's tier (premium, critical, normal, background), over the default."""
