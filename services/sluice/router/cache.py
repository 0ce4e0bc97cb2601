"""Response stores for the CACHE step of the fallback chain.

In-memory LRU with TTL by default (one per router); Redis when ``cache.redis_url`` is
set, so every router replica can serve what any of them completed. The cache is a
fallback: a store that fails is a miss (counted, logged), never a failed request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from cachetools import TTLCache
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from sluice.common.v1 import common_pb2
from sluice.core.clock import Clock
from sluice.core.errors import ServiceUnavailableError
from sluice.core.telemetry.spans import RequestSpans, redis_address

log = logging.getLogger("sluice.router.cache")


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A completed answer, as the cache serves it."""

    text: str
    output_tokens: int
    finish_reason: int
    usage: bytes

    def to_json(self) -> str:
        """Serialised for Redis."""
        return json.dumps(
            {
                "text": self.text,
                "output_tokens": self.output_tokens,
                "finish_reason": self.finish_reason,
                "usage": base64.b64encode(self.usage).decode(),
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> CachedAnswer:
        """Parsed from Redis."""
        data = json.loads(raw)
        return cls(
            text=str(data["text"]),
            output_tokens=int(data["output_tokens"]),
            finish_reason=int(data["finish_reason"]),
            usage=base64.b64decode(data["usage"]),
        )


def cache_key(model: str, messages: Sequence[common_pb2.Message], extra: Sequence[Any]) -> str:
    """Exact-match key of a normalised request: roles, trimmed texts and parameters."""
    normalised = [model, [[m.role, m.content.strip()] for m in messages], list(extra)]
    return hashlib.sha256(json.dumps(normalised, separators=(",", ":")).encode()).hexdigest()


class ResponseStore(Protocol):
    """Where completed answers are kept."""

    async def get(self, key: str) -> CachedAnswer | None:
        """The cached answer, if fresh."""
        ...

    async def put(self, key: str, answer: CachedAnswer, user: str = "") -> None:
        """Store an answer, remembering the end user whose request it answered."""
        ...

    async def erase_user(self, user: str) -> int:
        """Delete every answer stored for `user`'s requests; returns how many."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# A cached answer besides its text and usage: the entry, the dataclass and the key.
_ENTRY_OVERHEAD_BYTES = 400


# One user id remembered by an entry: the string and its set slot.
_USER_OVERHEAD_BYTES = 80


def answer_bytes(key: str, answer: CachedAnswer, users: frozenset[str] = frozenset()) -> int:
    """Estimated resident size of one cached answer (UTF-8 text: at least its length)
    and the user ids it is kept for."""
    return (
        _ENTRY_OVERHEAD_BYTES
        + len(key)
        + len(answer.text)
        + len(answer.usage)
        + sum(_USER_OVERHEAD_BYTES + len(user) for user in users)
    )


def user_set_key(user: str) -> str:
    """The Redis set of a user's cache keys, named by a digest (no user id in key names)."""
    digest = hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sluice:cache-user:{digest}"


class ResponseCache:
    """In-memory LRU with TTL over the injected clock, bounded by entries and by bytes.

    An answer may be up to `max_entry_chars` long, so a count alone lets the cache grow
    to entries x that: cachetools bounds the entries' estimated bytes, `put` their count.
    Each entry keeps the user ids of the requests it answered (identical requests of
    several users share it), for erasure.

    /metrics is served from another thread: a scrape reads only `currsize` (an int kept
    by cachetools), never the entries. Iterating a TTLCache reads each entry through
    `__getitem__`, which moves it in the LRU order: a scrape failed with a KeyError (HTTP
    500) while the serving thread evicted, and made a `put` there fail with "OrderedDict
    mutated during iteration".
    """

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        clock: Clock,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self._max_entries = max_entries
        self._entries: TTLCache[str, tuple[int, CachedAnswer, frozenset[str]]] = TTLCache(
            maxsize=max_bytes, ttl=ttl_s, timer=clock.monotonic, getsizeof=self._size
        )
        if registry is not None:
            registry.register(_CacheMemoryCollector(self))

    @staticmethod
    def _size(value: tuple[int, CachedAnswer, frozenset[str]]) -> int:
        return value[0]

    @property
    def bytes_used(self) -> int:
        """Estimated bytes held (expired entries count until the next write drops them)."""
        return int(self._entries.currsize)

    async def get(self, key: str) -> CachedAnswer | None:
        """The cached answer, if fresh."""
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    async def put(self, key: str, answer: CachedAnswer, user: str = "") -> None:
        """Store an answer (one bigger than the whole bound is not stored)."""
        previous = self._entries.get(key)
        users = previous[2] if previous is not None else frozenset()
        if user:
            users |= {user}
        size = answer_bytes(key, answer, users)
        if size > self.max_bytes:
            return
        if previous is None:
            self._entries.expire()
            while len(self._entries) >= self._max_entries:
                self._entries.popitem()  # the least recently used
        self._entries[key] = (size, answer, users)

    async def erase_user(self, user: str) -> int:
        """Delete every answer kept for `user` (one scan: erasure is rare)."""
        doomed = [key for key, entry in self._entries.items() if user in entry[2]]
        for key in doomed:
            self._entries.pop(key, None)
        return len(doomed)

    async def close(self) -> None:
        """Nothing to release."""

    def __len__(self) -> int:
        return len(self._entries)


class _CacheMemoryCollector(Collector):
    """The in-memory cache's bound and use, read at scrape time."""

    def __init__(self, cache: ResponseCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "sluice_router_cache_bound_bytes",
            "Most bytes the in-memory response cache may hold.",
            value=self._cache.max_bytes,
        )
        yield GaugeMetricFamily(
            "sluice_router_cache_used_bytes",
            "Estimated bytes the in-memory response cache holds now.",
            value=self._cache.bytes_used,
        )


class RedisResponseCache:
    """Answers in Redis under ``sluice:cache:<key>`` with a TTL, shared by every router."""

    def __init__(
        self,
        url: str,
        ttl_s: float,
        registry: CollectorRegistry,
        *,
        spans: RequestSpans | None = None,
    ) -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=0.2, socket_connect_timeout=0.2, retry_on_timeout=False
        )
        self._spans = spans or RequestSpans(None)
        self._address, self._db = redis_address(self._client)
        self._ttl_ms = int(ttl_s * 1000)
        self.failures = Counter(
            "sluice_router_cache_failures",
            "Response-cache operations that failed (treated as misses), by operation.",
            ["operation"],
            registry=registry,
        )

    async def get(self, key: str) -> CachedAnswer | None:
        """The cached answer, if fresh (None when Redis fails)."""
        try:
            with self._spans.redis(self._address, "GET", self._db):
                raw = await self._client.get(f"sluice:cache:{key}")
            return None if raw is None else CachedAnswer.from_json(raw)
        except (RedisError, OSError, ValueError, KeyError) as err:
            self.failures.labels("get").inc()
            log.warning("response cache get failed: %s", type(err).__name__)
            return None

    async def put(self, key: str, answer: CachedAnswer, user: str = "") -> None:
        """Store an answer (dropped when Redis fails); a user's answers are also listed
        in the user's set (`user_set_key`), which lives as long as its newest answer."""
        name = f"sluice:cache:{key}"
        try:
            with self._spans.redis(self._address, "SET", self._db):
                if not user:
                    await self._client.set(name, answer.to_json(), px=self._ttl_ms)
                    return
                users = user_set_key(user)
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.set(name, answer.to_json(), px=self._ttl_ms)
                    pipe.sadd(users, name)
                    pipe.pexpire(users, self._ttl_ms)
                    await pipe.execute()
        except (RedisError, OSError) as err:
            self.failures.labels("put").inc()
            log.warning("response cache put failed: %s", type(err).__name__)

    async def erase_user(self, user: str) -> int:
        """Delete the user's answers; a Redis failure is an error here (an erasure must
        not report success it did not achieve)."""
        users = user_set_key(user)
        try:
            with self._spans.redis(self._address, "SMEMBERS", self._db):
                names = list(await self._client.smembers(users))
            with self._spans.redis(self._address, "DEL", self._db):
                deleted = int(await self._client.delete(*names)) if names else 0
                await self._client.delete(users)
        except (RedisError, OSError) as err:
            self.failures.labels("erase").inc()
            raise ServiceUnavailableError(
                f"the response cache (Redis) cannot be reached: {type(err).__name__}"
            ) from err
        return deleted

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
