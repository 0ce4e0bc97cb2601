"""Which API key made each recent request, so feedback (router/feedback.py) is counted
only from the key that made the request it scores, and at most once per request.

Bounded in entries and time, and cheap on the request path: one clock read and one
dictionary insert per finished generation. Entries live in a few generations (plain
dicts); when the newest is full or a third of the window old a new one starts and the
oldest is dropped whole, so eviction never walks entries one by one. An id may be
scored for at least the window (unless `capacity` newer requests pushed it out) and at
most a third longer.

An id seen twice (a caller may choose its own `x-request-id`, core/grpcx/request_context.py)
keeps its first key: another key reusing someone's id cannot take over their request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

GENERATIONS = 4
"""Dicts kept; each spans a third of the window, so the one dropped at a rotation holds
only entries at least a window old (or, under load, the oldest quarter of `capacity`)."""


class RecentRequests:
    """request id -> key id of the requests this router served within the window."""

    __slots__ = ("_capacity", "_generations", "_monotonic", "_per_generation", "_span", "_window")

    def __init__(self, capacity: int, window_s: float, monotonic: Callable[[], float]) -> None:
        self._capacity = capacity
        self._per_generation = max(1, capacity // GENERATIONS)
        self._window = window_s
        self._span = window_s / (GENERATIONS - 1)
        self._monotonic = monotonic
        self._generations: deque[tuple[float, dict[str, str]]] = deque([(monotonic(), {})])

    def remember(self, request_id: str, key_id: str) -> None:
        """`key_id` made `request_id` (a second key for the same id is ignored)."""
        if not request_id:
            return
        started, newest = self._generations[-1]
        if len(newest) >= self._per_generation or self._monotonic() - started >= self._span:
            newest = self._rotate()
        newest.setdefault(request_id, key_id)

    def _rotate(self) -> dict[str, str]:
        fresh: dict[str, str] = {}
        self._generations.append((self._monotonic(), fresh))
        while len(self._generations) > GENERATIONS:
            self._generations.popleft()
        return fresh

    def _expire(self) -> None:
        """Drop generations whose newest entry is older than the window."""
        now = self._monotonic()
        # A generation's entries are at most span younger than its start.
        while (
            len(self._generations) > 1
            and now - self._generations[0][0] >= self._window + self._span
        ):
            self._generations.popleft()
        started, oldest = self._generations[0]
        if now - started >= self._window + self._span:
            oldest.clear()

    def take(self, request_id: str, key_id: str) -> bool:
        """True, once, when `key_id` made `request_id` within the window; the id is then
        forgotten so it cannot be scored twice. False for an unknown or expired id and
        for another key's request (the same answer, so ids cannot be probed)."""
        self._expire()
        owner = None
        for _, generation in self._generations:  # oldest first: the first key wins
            owner = generation.get(request_id)
            if owner is not None:
                break
        if owner != key_id:
            return False
        for _, generation in self._generations:
            generation.pop(request_id, None)
        return True

    def __len__(self) -> int:
        return sum(len(generation) for _, generation in self._generations)
