"""What remembering request ids for feedback costs the request path (router/recent_requests.py).

Usage: python loadtest/feedback_recent.py

Prints the time of one `remember` (the only per-request work /v1/feedback adds, once per
finished generation) against the loop's own overhead, and the bytes each remembered id
holds at the default capacity (tracemalloc), with 36-character ids as Envoy assigns.
"""

from __future__ import annotations

import time
import timeit
import tracemalloc
import uuid

from sluice.router.recent_requests import RecentRequests
from sluice.router.settings.feedback import FeedbackSettings


def main() -> None:
    settings = FeedbackSettings()
    ids = [str(uuid.uuid4()) for _ in range(200_000)]
    recent = RecentRequests(settings.recent_requests, settings.window_s, time.monotonic)
    remember = recent.remember
    n = len(ids)
    rounds = 5
    loop = min(timeit.repeat(lambda: [None for _ in ids], number=1, repeat=rounds)) / n
    insert = (
        min(timeit.repeat(lambda: [remember(i, "key-1") for i in ids], number=1, repeat=rounds)) / n
    )
    plain: dict[str, str] = {}
    setitem = (
        min(
            timeit.repeat(
                lambda: [plain.__setitem__(i, "key-1") for i in ids], number=1, repeat=rounds
            )
        )
        / n
    )
    print(
        f"remember: {(insert - loop) * 1e9:.0f} ns per request "
        f"(a bare dict insert: {(setitem - loop) * 1e9:.0f} ns; loop overhead {loop * 1e9:.0f} ns)"
    )
    taken = (
        min(
            timeit.repeat(
                lambda: [recent.take(i, "key-2") for i in ids[:10_000]], number=1, repeat=rounds
            )
        )
        / 10_000
    )
    print(f"take (another key's id, not counted): {taken * 1e9:.0f} ns per feedback")

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
    print(
        f"memory at {len(full)} ids: {(held + ids_bytes) / len(full):.0f} bytes per id "
        f"({(held + ids_bytes) / 1e6:.1f} MB; map {held / 1e6:.1f} MB + ids {ids_bytes / 1e6:.1f} MB)"
    )


if __name__ == "__main__":
    main()
