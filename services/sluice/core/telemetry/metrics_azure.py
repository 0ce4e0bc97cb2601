"""Azure Monitor metrics: the registry /metrics serves, as Application Insights metric
telemetry (`MetricData` envelopes POSTed to `<IngestionEndpoint>/v2.1/track`).

One envelope per labelled series, the labels as its properties. Application Insights
adds metric values up over its time grain, so a counter is sent as what it gained since
the last push the receiver accepted, a histogram as the `_sum` and `_count` it gained
(one `Aggregation` point: average = value / count), a gauge as its current value. A
dropped push loses no counter increase: the next accepted one carries it. Summaries and
info metrics are not sent, nor non-finite values (JSON cannot carry them).
docs/observability.md ("Connect your backend") shows the settings.
"""

from __future__ import annotations

import asyncio
import logging
import math
import platform
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from sluice.core.telemetry.app_insights import (
    RETRYABLE,
    SDK_VERSION,
    ConnectionString,
    TrackPoster,
    rejected_items,
)
from sluice.core.telemetry.http_post import Response

log = logging.getLogger(__name__)
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Point:
    """One series' current value; `count` only for histograms (then `value` is the sum)."""

    name: str
    labels: Labels
    value: float
    count: float | None = None
    cumulative: bool = True  # counters and histograms; gauges are not


def points(registry: CollectorRegistry) -> list[Point]:
    """Counters, gauges and histograms' _sum/_count, one Point per labelled series."""
    found: list[Point] = []
    for family in registry.collect():
        if family.type == "counter":
            found.extend(
                Point(s.name, tuple(sorted(s.labels.items())), s.value)
                for s in family.samples
                if s.name == family.name + "_total"
            )
        elif family.type == "gauge":
            found.extend(
                Point(s.name, tuple(sorted(s.labels.items())), s.value, cumulative=False)
                for s in family.samples
            )
        elif family.type == "histogram":
            sums: dict[Labels, float] = {}
            counts: dict[Labels, float] = {}
            for s in family.samples:
                labels = tuple(sorted(s.labels.items()))
                if s.name == family.name + "_sum":
                    sums[labels] = s.value
                elif s.name == family.name + "_count":
                    counts[labels] = s.value
            found.extend(
                Point(family.name, labels, sums.get(labels, 0.0), count)
                for labels, count in counts.items()
            )
    return [p for p in found if math.isfinite(p.value)]


class AzureMetricsSink:
    """Sends the registry's change since the last accepted push, with bounded retries."""

    def __init__(
        self,
        connection: ConnectionString,
        service: str,
        *,
        timeout_s: float,
        max_attempts: int,
        backoff_s: tuple[float, float],
    ) -> None:
        self._poster = TrackPoster(connection, timeout_s=timeout_s)
        ikey = connection.instrumentation_key
        self._envelope_name = f"Microsoft.ApplicationInsights.{ikey.replace('-', '')}.Metric"
        self._tags = {
            "ai.cloud.role": service,
            "ai.cloud.roleInstance": platform.node(),
            "ai.internal.sdkVersion": SDK_VERSION,
        }
        self._max_attempts = max_attempts
        self._backoff_initial_s, self._backoff_max_s = backoff_s
        # (sum, count) of each cumulative series as of the last push that was accepted.
        self._accepted: dict[tuple[str, Labels], tuple[float, float]] = {}

    def _data_point(self, point: Point) -> dict[str, object] | None:
        if not point.cumulative:
            return {"name": point.name, "kind": "Measurement", "value": point.value}
        value, count = point.value, point.count or 0.0
        before_value, before_count = self._accepted.get((point.name, point.labels), (0.0, 0.0))
        if value >= before_value and count >= before_count:  # else the series was reset
            value, count = value - before_value, count - before_count
        if point.count is None:
            return {"name": point.name, "kind": "Measurement", "value": value}
        if count <= 0:
            return None  # no observation since: an average of nothing
        return {"name": point.name, "kind": "Aggregation", "value": value, "count": int(count)}

    def envelopes(self, batch: list[Point]) -> tuple[list[dict[str, object]], list[Point]]:
        """The envelopes of `batch` and the Point each one stands for."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        envelopes: list[dict[str, object]] = []
        sent: list[Point] = []
        for point in batch:
            data_point = self._data_point(point)
            if data_point is None:
                continue
            base = {"ver": 2, "metrics": [data_point], "properties": dict(point.labels)}
            envelopes.append(
                {
                    "name": self._envelope_name,
                    "time": now,
                    "iKey": self._poster.instrumentation_key,
                    "tags": self._tags,
                    "data": {"baseType": "MetricData", "baseData": base},
                }
            )
            sent.append(point)
        return envelopes, sent

    async def send(self, registry: CollectorRegistry, *, attempts: int | None = None) -> str | None:
        """Push the current values; None when accepted, else why the push was dropped."""
        envelopes, sent = self.envelopes(points(registry))
        if not envelopes:
            return None
        delay = self._backoff_initial_s
        response = Response(0, b"", None, "not sent")
        for attempt in range(attempts or self._max_attempts):
            if attempt:
                wait = delay if response.retry_after_s is None else response.retry_after_s
                await asyncio.sleep(min(wait, self._backoff_max_s))
                delay = min(delay * 2, self._backoff_max_s)
            response = await self._poster.post(envelopes)
            if response.status == 200:
                self._accept(sent)
                return None
            if response.status == 206:
                return self._partial(sent, response.body)
            if response.status != 0 and response.status not in RETRYABLE:
                break
        return f"{response.error} {response.body[:200]!r}" if response.body else response.error

    def _accept(self, sent: list[Point]) -> None:
        for point in sent:
            if point.cumulative:
                self._accepted[(point.name, point.labels)] = (point.value, point.count or 0.0)

    def _partial(self, sent: list[Point], body: bytes) -> str:
        """Accepted items advance their baseline; a rejected counter's gain waits for the
        next push (a resend now would race the interval for little gain)."""
        try:
            rejected = rejected_items(body)
        except ValueError as err:
            return f"HTTP 206: {err}"
        self._accept([p for i, p in enumerate(sent) if i not in rejected])
        return f"HTTP 206: {len(rejected)} of {len(sent)} metrics not accepted"

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._poster.close()
