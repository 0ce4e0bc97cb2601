"""Request permits the limiter granted in advance (leases), per subject.

Most requests of a busy key are far from every limit, yet each used to cost a limiter
round trip (~0.7 ms of CPU and ~1.8 ms before the first token). With a lease, one
Acquire takes up to `ask` further permits from every limit the subject matches, and the
router admits that subject's next requests from them without a call. The limiter counts
the permits as admitted when it grants them and only grants while each limit keeps
ample headroom, so no limit admits more than it promises (limiter/README.md, "Leases").

Two rules keep the leased permits honest on this side:
- a permit is used at most once, and never after the lease's ttl, counted from when the
  Acquire was *sent* (the limiter decided later, so the router's expiry comes first);
- a lease is asked for only for a subject already seen, one ask in flight per subject,
  so callers that vary a field per request (`user` is theirs to set) cannot make every
  request take a batch of permits it will never use.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from sluice.core.clock import Clock

LeaseKey = tuple[str, str, str, str, str]
"""(api_key_id, tenant, user, endpoint, model): the AcquireRequest fields a lease is for."""


@dataclass(slots=True)
class _Lease:
    permits: int = 0
    expires_at: float = 0.0
    asking: bool = False


# The dict slot, the key tuple and its five str objects, and the _Lease.
_ENTRY_OVERHEAD_BYTES = 480
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


def entry_bytes(key: LeaseKey) -> int:
    """Estimated resident size of one subject's entry (its fields are the caller's, so
    they count by length: a `user` may be as long as a header allows)."""
    return _ENTRY_OVERHEAD_BYTES + sum(len(field) for field in key)


class LeaseBook:
    """Leased permits per subject; at most `max_subjects` are remembered, taking at most
    `max_bytes` (estimated), the oldest going first."""

    def __init__(
        self,
        clock: Clock,
        *,
        ask: int,
        max_subjects: int = 10_000,
        max_bytes: int = DEFAULT_MAX_BYTES,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._clock = clock
        self._ask = ask
        self._max_subjects = max_subjects
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self._leases: dict[LeaseKey, _Lease] = {}
        if registry is not None:
            Gauge(
                "sluice_router_lease_book_bound_bytes",
                "Most bytes the book of leased limiter permits may hold.",
                registry=registry,
            ).set(max_bytes)
            Gauge(
                "sluice_router_lease_book_used_bytes",
                "Estimated bytes the book of leased limiter permits holds now.",
                registry=registry,
            ).set_function(lambda: self.bytes_used)

    def __contains__(self, key: object) -> bool:
        return key in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    @property
    def enabled(self) -> bool:
        return self._ask > 0

    def take(self, key: LeaseKey) -> bool:
        """Use one leased permit for `key`, if a live one is left."""
        lease = self._leases.get(key)
        if lease is None or lease.permits <= 0:
            return False
        if self._clock.monotonic() >= lease.expires_at:
            lease.permits = 0  # unused permits lapse with the lease
            return False
        lease.permits -= 1
        return True

    def ask_for(self, key: LeaseKey) -> int:
        """How many permits to ask for with this subject's Acquire (0: none).

        A non-zero answer must be followed by `granted` or `refused` for the same key.
        """
        if self._ask <= 0:
            return 0
        lease = self._leases.get(key)
        if lease is None:
            size = entry_bytes(key)
            if size > self.max_bytes:
                return 0  # never remembered: asks nothing, like a subject seen once
            while self._leases and (
                len(self._leases) >= self._max_subjects or self.bytes_used + size > self.max_bytes
            ):
                oldest = next(iter(self._leases))
                del self._leases[oldest]
                self.bytes_used -= entry_bytes(oldest)
            self._leases[key] = _Lease()  # seen once: ask from the next request on
            self.bytes_used += size
            return 0
        if lease.asking:
            return 0
        lease.asking = True
        return self._ask

    def granted(self, key: LeaseKey, permits: int, ttl_ms: int, sent_at: float) -> None:
        """Record the limiter's answer to an ask sent at `sent_at` (monotonic seconds)."""
        lease = self._leases.get(key)
        if lease is None:  # evicted while asking
            return
        lease.asking = False
        if permits > 0 and ttl_ms > 0:
            # A fresh lease replaces what is left of the old one: those permits lapse.
            lease.permits = permits
            lease.expires_at = sent_at + ttl_ms / 1000.0

    def refused(self, key: LeaseKey) -> None:
        """The ask's Acquire failed: nothing was granted."""
        lease = self._leases.get(key)
        if lease is not None:
            lease.asking = False
