"""What one API key may hold at once in this router: open streams, and its own request rate.

Every transport admits its streams here, through the Generate pipeline
(router/pipeline.py): gRPC Generate and Complete, the OpenAI-compatible API (SSE or
whole answers), and Converse over gRPC or the WebSocket bridge, where the whole
conversation holds one slot for its life (its turns run inside it). A key at its cap
(`Principal.max_streams`) is refused with QUOTA_EXCEEDED (RESOURCE_EXHAUSTED, HTTP 429),
so one key cannot take every stream the edge and the router can hold. A slot is released
once, however the stream ends: completed, failed, cancelled by the client or cut by a
disconnect (the pipeline's `finally`, the conversation's `aclose`).

A key entry's own `rate_limit` (router/keystore.py) is a token bucket here, per router
replica; the limiter's policies remain the shared, exact limits.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from sluice.core.errors import QuotaExceededError, QuotaViolation
from sluice.router.auth import Principal


class StreamSlot:
    """One admitted stream of a key; `release` is idempotent."""

    __slots__ = ("_caps", "_key_id", "_released")

    def __init__(self, caps: KeyCaps, key_id: str) -> None:
        self._caps = caps
        self._key_id = key_id
        self._released = False

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        if self._released:
            return
        self._released = True
        self._caps.release(self._key_id)


class KeyCaps:
    """Open streams per key, and each key's own request rate."""

    def __init__(self, registry: CollectorRegistry, monotonic: Callable[[], float]) -> None:
        self._open: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._monotonic = monotonic
        self.refused = Counter(
            "sluice_router_key_cap_refusals",
            "Requests refused by a key's own caps, by cap (streams, rate).",
            ["cap"],
            registry=registry,
        )
        self.open_streams = Gauge(
            "sluice_router_key_streams_open",
            "Streams held open by API keys (every transport), summed over keys.",
            registry=registry,
        )

    def open_count(self, key_id: str) -> int:
        """Streams the key holds open now."""
        return self._open.get(key_id, 0)

    def acquire(self, principal: Principal) -> StreamSlot:
        """A slot for one more stream of the key, or QUOTA_EXCEEDED at its cap."""
        self._take_rate(principal)
        key_id = principal.key_id
        held = self._open.get(key_id, 0)
        if held >= principal.max_streams:
            self.refused.labels("streams").inc()
            raise QuotaExceededError(
                f"the API key already holds {held} open streams, its cap",
                metadata={
                    "limit": "max_concurrent_streams",
                    "max_concurrent_streams": str(principal.max_streams),
                    "key_id": key_id,
                },
                quota_violations=[
                    QuotaViolation(
                        f"api_key:{key_id}",
                        f"at most {principal.max_streams} concurrent streams per key",
                    )
                ],
                retry_after_s=1.0,
            )
        self._open[key_id] = held + 1
        self.open_streams.inc()
        return StreamSlot(self, key_id)

    def release(self, key_id: str) -> None:
        """One stream of the key ended (StreamSlot.release calls this once per slot)."""
        held = self._open.get(key_id, 0) - 1
        if held > 0:
            self._open[key_id] = held
        else:
            self._open.pop(key_id, None)
        self.open_streams.dec()

    def _take_rate(self, principal: Principal) -> None:
        rate = principal.requests_per_minute
        if rate is None:
            return
        now = self._monotonic()
        per_s = rate / 60.0
        tokens, since = self._buckets.get(principal.key_id, (float(rate), now))
        tokens = min(float(rate), tokens + (now - since) * per_s)
        if tokens < 1.0:
            self._buckets[principal.key_id] = (tokens, now)
            self.refused.labels("rate").inc()
            raise QuotaExceededError(
                f"the API key's rate of {rate} requests per minute is used up",
                metadata={"limit": "requests_per_minute", "key_id": principal.key_id},
                quota_violations=[
                    QuotaViolation(
                        f"api_key:{principal.key_id}", f"at most {rate} requests per minute"
                    )
                ],
                retry_after_s=(1.0 - tokens) / per_s,
            )
        if len(self._buckets) > 100_000:  # bounded: buckets of idle keys refill anyway
            self._buckets.clear()
        self._buckets[principal.key_id] = (tokens - 1.0, now)
