"""In-memory token buckets, one per subject (the embedded default backend).

The full set of algorithms and the Redis backend come later; this one is exact for a
single replica and costs one dict lookup and a few float operations per decision.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from sluice.core.clock import Clock
from sluice.limiter.settings import BucketSettings


@dataclass(slots=True)
class Decision:
    """The outcome of one take."""

    allowed: bool
    remaining: float
    capacity: float
    retry_after_s: float
    reset_after_s: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """A bounded map of subject -> token bucket."""

    def __init__(
        self,
        clock: Clock,
        default: BucketSettings,
        overrides: dict[str, BucketSettings] | None = None,
        max_subjects: int = 100_000,
    ) -> None:
        self._clock = clock
        self._default = default
        self._overrides = overrides or {}
        self._max_subjects = max_subjects
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, subject: str, cost: float = 1.0) -> Decision:
        """Take `cost` tokens from the subject's bucket if it holds them."""
        config = self._overrides.get(subject, self._default)
        now = self._clock.monotonic()
        bucket = self._buckets.get(subject)
        if bucket is None:
            bucket = _Bucket(tokens=config.capacity, updated=now)
            self._buckets[subject] = bucket
            if len(self._buckets) > self._max_subjects:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(subject)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(config.capacity, bucket.tokens + elapsed * config.refill_per_second)
            bucket.updated = now
        rate = config.refill_per_second
        if cost > config.capacity:
            return Decision(False, bucket.tokens, config.capacity, math.inf, 0.0)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            reset = (config.capacity - bucket.tokens) / rate
            return Decision(True, bucket.tokens, config.capacity, 0.0, reset)
        wait = (cost - bucket.tokens) / rate
        reset = (config.capacity - bucket.tokens) / rate
        return Decision(False, bucket.tokens, config.capacity, wait, reset)
