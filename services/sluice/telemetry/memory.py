"""Size estimates of what telemetry holds in memory, so every store is bounded by bytes.

A count of traces or samples does not bound memory (one trace may hold 3 spans or
2,000, each with few or many attributes). Each store adds up an estimate per item and
drops its oldest items beyond its byte bound; /metrics reports every bound and what
is used (`sluice_telemetry_memory_bound_bytes`, `sluice_telemetry_memory_used_bytes`).

The estimates come from serialized sizes. A parsed OTLP span alone takes about four
times its wire size (upb protobuf: ~1,430 bytes resident for a 359-byte span with
eight attributes); in the running service the resident memory grew 1.6 times the
estimate made with that factor (a 20-minute soak, loadtest/soak.py: +80 MB for 50 MB
of stored traces: allocator slack, the request arenas the spans keep alive), so the
factor is six.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sluice.telemetry.sampling import StoredSpan

# Resident bytes per serialized byte of a parsed span (see above).
MEMORY_PER_WIRE_BYTE = 6
# The StoredSpan, its list slot and the message wrapper object.
SPAN_OVERHEAD_BYTES = 128
# A statistics sample: a slotted dataclass of nine fields, its float objects and deque
# slot; the strings it names are counted by length on top.
SAMPLE_OVERHEAD_BYTES = 240
# One remembered decision (for late spans): the 16-byte trace id object and its
# OrderedDict slot, 188 bytes with tracemalloc in the running sampler (tests/unit/
# telemetry/test_memory_bounds.py), with room for the table's growth. Every entry has
# this size, so the count bound (`sampling.max_pending_traces`) is a byte bound.
DECISION_BYTES = 240


def span_bytes(item: StoredSpan) -> int:
    """Estimated resident size of one held span."""
    return MEMORY_PER_WIRE_BYTE * item.span.ByteSize() + SPAN_OVERHEAD_BYTES


def spans_bytes(items: list[StoredSpan]) -> int:
    """Estimated resident size of held spans."""
    return sum(span_bytes(item) for item in items)


class MemoryCollector(Collector):
    """Reports each store's byte bound and estimated use at scrape time."""

    def __init__(self, stores: dict[str, tuple[int, Callable[[], int]]]) -> None:
        self._stores = stores

    def collect(self) -> Iterator[GaugeMetricFamily]:
        bound = GaugeMetricFamily(
            "sluice_telemetry_memory_bound_bytes",
            "Most bytes an in-memory store may hold (its oldest items go beyond).",
            labels=["store"],
        )
        used = GaugeMetricFamily(
            "sluice_telemetry_memory_used_bytes",
            "Estimated bytes an in-memory store holds now (from serialized sizes).",
            labels=["store"],
        )
        for name, (limit, current) in sorted(self._stores.items()):
            bound.add_metric([name], limit)
            used.add_metric([name], current())
        yield bound
        yield used
