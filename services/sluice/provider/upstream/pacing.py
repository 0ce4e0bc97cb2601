"""Pacing against the upstream's own quota."""

from __future__ import annotations

from aiolimiter import AsyncLimiter

from sluice.provider.settings import PacingSettings


class Pacer:
    """Requests and tokens per minute against the upstream's quota (aiolimiter)."""

    def __init__(self, settings: PacingSettings) -> None:
        self.requests = (
            AsyncLimiter(settings.requests_per_minute, 60.0)
            if settings.requests_per_minute
            else None
        )
        self.tokens = (
            AsyncLimiter(settings.tokens_per_minute, 60.0) if settings.tokens_per_minute else None
        )

    async def acquire(self, tokens: int) -> None:
        """Wait until one more request of about `tokens` tokens fits the quota."""
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            # A request larger than a minute's quota waits for a whole minute, not forever.
            await self.tokens.acquire(min(max(tokens, 1), self.tokens.max_rate))
