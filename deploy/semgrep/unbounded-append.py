import collections


class LeakyBudget:
    def __init__(self) -> None:
        self._stamps: list[float] = []
        self._seen: list[str] = []

    def record(self, now: float) -> None:
        # ruleid: sluice-unbounded-list-append
        self._stamps.append(now)

    def remember(self, names: list[str]) -> None:
        # ruleid: sluice-unbounded-list-append
        self._seen.extend(names)


class TrimmedWindow:
    def __init__(self) -> None:
        self._stamps: list[float] = []
        self._window: list[float] = []
        self._ring: collections.deque[float] = collections.deque(maxlen=100)

    def record(self, now: float) -> None:
        # ok: sluice-unbounded-list-append
        self._stamps.append(now)
        # ok: sluice-unbounded-list-append
        self._window.append(now)
        # ok: sluice-unbounded-list-append
        self._ring.append(now)

    def trim(self, horizon: float) -> None:
        while self._stamps and self._stamps[0] < horizon:
            self._stamps.pop(0)
        self._window = [stamp for stamp in self._window if stamp >= horizon]


class DrainedStore:
    def __init__(self) -> None:
        self._queued: list[int] = []
        self._spans: collections.deque[int] = collections.deque()
        self._edges: collections.deque[int] = collections.deque()

    def add(self, item: int) -> None:
        # ok: sluice-unbounded-list-append
        self._queued.append(item)
        # ok: sluice-unbounded-list-append
        self._spans.append(item)
        # ok: sluice-unbounded-list-append
        self._edges.append(item)

    def take(self) -> list[int]:
        taken, self._queued = self._queued, []
        spans, edges = self._spans, self._edges
        while spans and spans[0] < 0:
            spans.popleft()
        while edges and edges[0] < 0:
            edges.popleft()
        return taken


class StreamState:
    """Per request: dropped with its stream, so not scanned."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def add(self, text: str) -> None:
        # ok: sluice-unbounded-list-append
        self.text.append(text)
