"""What remembering request ids for feedback costs the request path (router/recent_requests.py).

Usage: python loadtest/feedback_recent.py

Prints the time of one `remember` (the only per-request work /v1/feedback adds, once per
finished generation) beside a bare dict insert, and the bytes each remembered id holds at
the default capacity (tracemalloc), with 36-character ids as Envoy assigns.
"""

from __future__ import annotations

import time
import timeit
import tracemalloc
import uuid
from collections.abc import Callable

from sluice.router.recent_requests import RecentRequests
from sluice.router.settings.feedback import FeedbackSettings

ROUNDS = 5


def main() -> None:
    settings = FeedbackSettings()
    ids = [str(uuid.uuid4()) for _ in range(200_000)]
    recent = RecentRequests(settings.recent_requests, settings.window_s, time.monotonic)
    remember = recent.remember
    plain: dict[str, str] = {}

    def loop() -> None:
        for _ in ids:
            pass

    def remembering() -> None:
        for request_id in ids:
            remember(request_id, "key-1")

    def inserting() -> None:
        for request_id in ids:
            plain[request_id] = "key-1"

    def taking() -> None:
        for request_id in ids[:10_000]:
            recent.take(request_id, "key-2")

    def per_item(work: Callable[[], None], n: int = len(ids)) -> float:
        return min(timeit.repeat(work, number=1, repeat=ROUNDS)) / n

    overhead, insert, setitem = per_item(loop), per_item(remembering), per_item(inserting)
    print(
        f"remember: {(insert - overhead) * 1e9:.0f} ns per request "
        f"(a bare dict insert: {(setitem - overhead) * 1e9:.0f} ns; "
        f"loop overhead {overhead * 1e9:.0f} ns)"
    )
    print(f"take (another key's id, not counted): {per_item(taking, 10_000) * 1e9:.0f} ns")

    fresh = [str(uuid.uuid4()) for _ in range(settings.recent_requests)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    full = RecentRequests(settings.recent_requests, settings.window_s, time.monotonic)
    for request_id in fresh:
        full.remember(request_id, "key-1")
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # The ids are the requests' own strings (kept alive by the map, not copied), so
    # their bytes count as held: after the request ends only the map keeps them.
    ids_bytes = sum(len(i) + 49 for i in fresh)
    total = held + ids_bytes
    print(
        f"memory at {len(full)} ids: {total / len(full):.0f} bytes per id "
        f"({total / 1e6:.1f} MB; map {held / 1e6:.1f} MB + ids {ids_bytes / 1e6:.1f} MB)"
    )


if __name__ == "__main__":
    main()
