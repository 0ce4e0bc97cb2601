"""The rate-limiting algorithms, as pure functions of (state, now, cost).

Each algorithm keeps its state as a short list of floats, so the same state can live in
a Python dict (the in-memory backend) or a Redis string (the Redis backend, whose Lua
script in `redis.py` mirrors these functions line for line). Nothing here reads
a clock: `now` is passed in, so tests drive time exactly.

The four algorithms and what each promises (README.md has the trade-offs):

- token bucket: `capacity` burst, refilled at `refill_per_second`; over any interval of
  length T it admits at most capacity + T * rate.
- fixed window: at most `limit` per aligned window [k*W, (k+1)*W).
- sliding window log: at most `limit` in every window (t - W, t]; exact, O(limit) state.
- sliding window counter: the previous window weighted by its overlap plus the current
  one stays within `limit`; O(1) state; at most `limit` per aligned window, and at most
  2 * limit in a sliding window when traffic bunches at a window's end.

Leases (`grant_lease`) hand out request permits in advance, in the same decision as a
request, without weakening any of these promises as long as each permit is used at most
once and before the lease's ttl runs out: a window counts the permits at once and clamps
the ttl to the window's end; the token bucket takes them out of the bucket into the
holder's "pocket" and refills only up to `capacity - leased` until the pocket lapses, so
bucket + pocket never exceeds `capacity`. The sliding log cannot lease (its entries slide
out one window after the grant, while the permits are used later).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

AlgorithmName = Literal["token_bucket", "fixed_window", "sliding_log", "sliding_counter"]

State = list[float]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one decision against one limit."""

    allowed: bool
    remaining: float
    """Units left after this decision (never negative)."""
    limit: float
    """The limit's capacity (bucket size or units per window)."""
    retry_after_s: float
    """0 when allowed; the wait until the same cost would fit; inf if it never will."""
    reset_after_s: float
    """Seconds until the limit is back to full (or its window ends)."""


class Algorithm(Protocol):
    """One configured limit. Implementations are immutable and pure."""

    @property
    def name(self) -> AlgorithmName:
        """The algorithm's identifier (also used by the Redis script)."""
        ...

    @property
    def limit(self) -> float:
        """Capacity: the largest burst or the units allowed per window."""
        ...

    @property
    def params(self) -> tuple[float, float]:
        """(limit, rate-or-window): what the Redis script needs."""
        ...

    def decide(
        self, state: Sequence[float] | None, now: float, cost: float
    ) -> tuple[Verdict, State]:
        """Admit `cost` units at `now` or not; the new state matters only when admitted."""
        ...

    def adjust(
        self, state: Sequence[float] | None, now: float, delta: float, reserved_at: float
    ) -> State:
        """Charge (delta > 0) or refund (delta < 0) units reserved at `reserved_at`."""
        ...

    def ttl_s(self) -> float:
        """How long an untouched state stays meaningful (then it is as good as fresh)."""
        ...

    def scaled(self, share: float) -> Algorithm:
        """The same limit with capacity and rate multiplied by `share` (fallback split)."""
        ...

    def lease_ttl_s(self, now: float, ttl_s: float) -> float:
        """The longest a lease granted at `now` may last, at most `ttl_s` (0: none)."""
        ...

    def lease(self, state: State, now: float, requests: float, ttl_s: float) -> State:
        """Take `requests` permits from `state` (just admitted at `now`) for `ttl_s`."""
        ...


def _refused_forever(remaining: float, limit: float, reset: float) -> Verdict:
    return Verdict(False, max(0.0, remaining), limit, math.inf, max(0.0, reset))


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """`capacity` units of burst, refilled continuously at `refill_per_second`.

    State: [tokens, updated, leased, leased_until] (a stored [tokens, updated] reads as
    nothing leased). Tokens may go below zero only through `adjust` (a reservation that
    turned out larger than estimated): that debt is repaid by refill before anything else
    is admitted. `leased` permits are in lease holders' pockets until `leased_until`;
    meanwhile the bucket refills only to `capacity - leased`, so the tokens in existence
    (bucket and pockets) never exceed `capacity`.
    """

    capacity: float
    refill_per_second: float

    @property
    def name(self) -> AlgorithmName:
        return "token_bucket"

    @property
    def limit(self) -> float:
        return self.capacity

    @property
    def params(self) -> tuple[float, float]:
        return (self.capacity, self.refill_per_second)

    def _refill(self, state: Sequence[float] | None, now: float) -> State:
        if state is None:
            return [self.capacity, now, 0.0, 0.0]
        tokens, updated = state[0], state[1]
        leased, until = (state[2], state[3]) if len(state) > 2 else (0.0, 0.0)
        rate = self.refill_per_second
        if leased > 0 and now >= until:
            # The pockets lapsed at `until`: refill up to then with them still counted.
            if until > updated:
                tokens = min(self.capacity - leased, tokens + (until - updated) * rate)
                updated = until
            leased, until = 0.0, 0.0
        elapsed = max(0.0, now - updated)
        # A clock that steps back does not mint tokens when it steps forward again.
        tokens = min(self.capacity - leased, tokens + elapsed * rate)
        return [tokens, max(updated, now), leased, until]

    def decide(
        self, state: Sequence[float] | None, now: float, cost: float
    ) -> tuple[Verdict, State]:
        new = self._refill(state, now)
        tokens = new[0]
        rate = self.refill_per_second
        if cost > self.capacity:
            return _refused_forever(tokens, self.capacity, (self.capacity - tokens) / rate), new
        if tokens >= cost:
            tokens -= cost
            new[0] = tokens
            reset = (self.capacity - tokens) / rate
            return Verdict(True, max(0.0, tokens), self.capacity, 0.0, reset), new
        wait = (cost - tokens) / rate
        reset = (self.capacity - tokens) / rate
        return Verdict(False, max(0.0, tokens), self.capacity, wait, reset), new

    def adjust(
        self, state: Sequence[float] | None, now: float, delta: float, reserved_at: float
    ) -> State:
        new = self._refill(state, now)
        new[0] = min(self.capacity - new[2], new[0] - delta)
        return new

    def ttl_s(self) -> float:
        return self.capacity / self.refill_per_second + 1.0

    def scaled(self, share: float) -> TokenBucket:
        return TokenBucket(self.capacity * share, self.refill_per_second * share)

    def lease_ttl_s(self, now: float, ttl_s: float) -> float:
        return ttl_s

    def lease(self, state: State, now: float, requests: float, ttl_s: float) -> State:
        tokens, updated, leased, until = state
        return [tokens - requests, updated, leased + requests, max(until, now + ttl_s)]


def window_lease_ttl_s(now: float, ttl_s: float, window: float) -> float:
    """A window's lease ends with the window: every use must fall in the window the
    permits were counted in."""
    return min(ttl_s, window_start(now, window) + window - now)


def window_start(now: float, window: float) -> float:
    """The start of the aligned window holding `now`."""
    return math.floor(now / window) * window


@dataclass(frozen=True, slots=True)
class FixedWindow:
    """At most `limit` units per aligned window of `window_s` seconds.

    State: [window_start, used].
    """

    limit: float
    window_s: float

    @property
    def name(self) -> AlgorithmName:
        return "fixed_window"

    @property
    def params(self) -> tuple[float, float]:
        return (self.limit, self.window_s)

    def _roll(self, state: Sequence[float] | None, now: float) -> tuple[float, float]:
        start = window_start(now, self.window_s)
        if state is None or state[0] < start:
            return start, 0.0
        return state[0], state[1]

    def decide(
        self, state: Sequence[float] | None, now: float, cost: float
    ) -> tuple[Verdict, State]:
        start, used = self._roll(state, now)
        reset = start + self.window_s - now
        if cost > self.limit:
            return _refused_forever(self.limit - used, self.limit, reset), [start, used]
        if used + cost <= self.limit:
            used += cost
            return Verdict(True, max(0.0, self.limit - used), self.limit, 0.0, reset), [start, used]
        return Verdict(False, max(0.0, self.limit - used), self.limit, reset, reset), [start, used]

    def adjust(
        self, state: Sequence[float] | None, now: float, delta: float, reserved_at: float
    ) -> State:
        start, used = self._roll(state, now)
        if delta > 0:
            used += delta
        elif window_start(reserved_at, self.window_s) == start:
            # A refund only matters while the window it was reserved in is current.
            used = max(0.0, used + delta)
        return [start, used]

    def ttl_s(self) -> float:
        return self.window_s + 1.0

    def scaled(self, share: float) -> FixedWindow:
        return FixedWindow(self.limit * share, self.window_s)

    def lease_ttl_s(self, now: float, ttl_s: float) -> float:
        return window_lease_ttl_s(now, ttl_s, self.window_s)

    def lease(self, state: State, now: float, requests: float, ttl_s: float) -> State:
        return [state[0], state[1] + requests]


@dataclass(frozen=True, slots=True)
class SlidingLog:
    """At most `limit` units in every window (t - window_s, t]: exact, O(entries) state.

    State: a flat list [t1, c1, t2, c2, ...] of admissions (and refunds, as negative
    costs at the reservation's time), sorted by time.
    """

    limit: float
    window_s: float

    @property
    def name(self) -> AlgorithmName:
        return "sliding_log"

    @property
    def params(self) -> tuple[float, float]:
        return (self.limit, self.window_s)

    def _live(self, state: Sequence[float] | None, now: float) -> State:
        if not state:
            return []
        horizon = now - self.window_s
        live: State = []
        for index in range(0, len(state), 2):
            if state[index] > horizon:
                live.append(state[index])
                live.append(state[index + 1])
        return live

    def decide(
        self, state: Sequence[float] | None, now: float, cost: float
    ) -> tuple[Verdict, State]:
        live = self._live(state, now)
        total = sum(live[1::2])
        reset = live[-2] + self.window_s - now if live else 0.0
        if cost > self.limit:
            return _refused_forever(self.limit - total, self.limit, reset), live
        if total + cost <= self.limit:
            live.append(now)
            live.append(cost)
            remaining = self.limit - (total + cost)
            return Verdict(True, max(0.0, remaining), self.limit, 0.0, self.window_s), live
        # The earliest moment enough old entries have slid out for `cost` to fit.
        freed = 0.0
        wait = reset
        for index in range(0, len(live), 2):
            freed += live[index + 1]
            last_of_instant = index + 2 >= len(live) or live[index + 2] != live[index]
            if last_of_instant and total - freed + cost <= self.limit:
                wait = live[index] + self.window_s - now
                break
        return Verdict(False, max(0.0, self.limit - total), self.limit, wait, reset), live

    def adjust(
        self, state: Sequence[float] | None, now: float, delta: float, reserved_at: float
    ) -> State:
        live = self._live(state, now)
        if delta > 0:
            live.append(now)
            live.append(delta)
        elif delta < 0 and reserved_at > now - self.window_s:
            # The refund leaves the window when the reservation does.
            at = 0
            while at < len(live) and live[at] <= reserved_at:
                at += 2
            live[at:at] = [reserved_at, delta]
        return live

    def ttl_s(self) -> float:
        return self.window_s + 1.0

    def scaled(self, share: float) -> SlidingLog:
        return SlidingLog(self.limit * share, self.window_s)

    def lease_ttl_s(self, now: float, ttl_s: float) -> float:
        return 0.0  # an entry slides out one window after the grant, not after the use

    def lease(self, state: State, now: float, requests: float, ttl_s: float) -> State:
        raise ValueError("the sliding window log cannot lease")


@dataclass(frozen=True, slots=True)
class SlidingCounter:
    """Two counters: the previous window, weighted by how much of it the sliding window
    still covers, plus the current one must stay within `limit`. O(1) state.

    State: [window_start, current, previous].
    """

    limit: float
    window_s: float

    @property
    def name(self) -> AlgorithmName:
        return "sliding_counter"

    @property
    def params(self) -> tuple[float, float]:
        return (self.limit, self.window_s)

    def _roll(self, state: Sequence[float] | None, now: float) -> tuple[float, float, float]:
        start = window_start(now, self.window_s)
        if state is None:
            return start, 0.0, 0.0
        begun, current, previous = state[0], state[1], state[2]
        if begun >= start:
            return begun, current, previous
        if begun == start - self.window_s:
            return start, 0.0, current
        return start, 0.0, 0.0

    def decide(
        self, state: Sequence[float] | None, now: float, cost: float
    ) -> tuple[Verdict, State]:
        start, current, previous = self._roll(state, now)
        window = self.window_s
        weight = 1.0 - (now - start) / window
        estimate = previous * weight + current
        if current > 0:
            reset = start + 2 * window - now
        elif previous > 0:
            reset = start + window - now
        else:
            reset = 0.0
        if cost > self.limit:
            return _refused_forever(self.limit - estimate, self.limit, reset), [
                start,
                current,
                previous,
            ]
        if estimate + cost <= self.limit:
            current += cost
            remaining = self.limit - (estimate + cost)
            return Verdict(True, max(0.0, remaining), self.limit, 0.0, reset), [
                start,
                current,
                previous,
            ]
        if current + cost <= self.limit:
            # Later in this window, once the previous window's weight has fallen enough.
            at = start + window * (1.0 - (self.limit - current - cost) / previous)
        else:
            # In the next window, once this window's weight has fallen enough.
            at = start + window + window * (1.0 - (self.limit - cost) / current)
        wait = max(0.0, at - now)
        remaining = max(0.0, self.limit - estimate)
        return Verdict(False, remaining, self.limit, wait, reset), [start, current, previous]

    def adjust(
        self, state: Sequence[float] | None, now: float, delta: float, reserved_at: float
    ) -> State:
        start, current, previous = self._roll(state, now)
        if delta > 0:
            current += delta
        else:
            reserved_in = window_start(reserved_at, self.window_s)
            if reserved_in == start:
                current = max(0.0, current + delta)
            elif reserved_in == start - self.window_s:
                previous = max(0.0, previous + delta)
        return [start, current, previous]

    def ttl_s(self) -> float:
        return 2 * self.window_s + 1.0

    def scaled(self, share: float) -> SlidingCounter:
        return SlidingCounter(self.limit * share, self.window_s)

    def lease_ttl_s(self, now: float, ttl_s: float) -> float:
        return window_lease_ttl_s(now, ttl_s, self.window_s)

    def lease(self, state: State, now: float, requests: float, ttl_s: float) -> State:
        return [state[0], state[1] + requests, state[2]]


def make_algorithm(name: AlgorithmName, limit: float, rate_or_window: float) -> Algorithm:
    """The algorithm called `name`: (capacity, refill/s) or (limit, window seconds)."""
    if name == "token_bucket":
        return TokenBucket(limit, rate_or_window)
    if name == "fixed_window":
        return FixedWindow(limit, rate_or_window)
    if name == "sliding_log":
        return SlidingLog(limit, rate_or_window)
    return SlidingCounter(limit, rate_or_window)


LEASABLE: frozenset[AlgorithmName] = frozenset({"token_bucket", "fixed_window", "sliding_counter"})
"""Algorithms whose promise survives a lease (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class LeaseAsk:
    """What a lease may be, at most (the caller's wish capped by settings)."""

    requests: int
    """Permits wanted beyond the request itself (already capped by max_requests)."""
    ttl_s: float
    """Longest lease."""
    min_headroom: float
    """Share of each limit that must stay free after the lease."""


@dataclass(frozen=True, slots=True)
class Lease:
    """Permits granted in advance: usable once each, before `ttl_s` after the decision."""

    requests: int
    ttl_s: float


def whole_ms(ttl_s: float) -> float:
    """A ttl rounded down to whole milliseconds (what the response carries), never up."""
    ms = math.floor(ttl_s * 1000)
    if ms / 1000 > ttl_s:  # the product rounded up to a whole number
        ms -= 1
    return ms / 1000


def grant_lease(
    algorithms: Sequence[Algorithm],
    verdicts: Sequence[Verdict],
    states: list[State],
    now: float,
    ask: LeaseAsk,
) -> Lease | None:
    """The lease to take along with a request admitted at `now` (states updated in place).

    n = min(asked, and per limit floor(remaining - min_headroom * limit)); the ttl is the
    shortest any limit allows, in whole milliseconds. None when n < 1 or the ttl is 0.
    """
    requests = float(ask.requests)
    ttl = ask.ttl_s
    for algorithm, verdict in zip(algorithms, verdicts, strict=True):
        requests = min(requests, math.floor(verdict.remaining - ask.min_headroom * algorithm.limit))
        ttl = min(ttl, algorithm.lease_ttl_s(now, ask.ttl_s))
    ttl = whole_ms(ttl)
    if requests < 1 or ttl <= 0:
        return None
    for index, algorithm in enumerate(algorithms):
        states[index] = algorithm.lease(states[index], now, requests, ttl)
    return Lease(int(requests), ttl)


def leased_verdict(algorithm: Algorithm, verdict: Verdict, requests: int) -> Verdict:
    """How a limit stands once `requests` permits were leased from it too."""
    reset = verdict.reset_after_s
    if isinstance(algorithm, TokenBucket):
        reset += requests / algorithm.refill_per_second
    return replace(verdict, remaining=max(0.0, verdict.remaining - requests), reset_after_s=reset)
