"""A small client of Prometheus's HTTP query API (instant and range queries)."""

from __future__ import annotations

import math
from typing import Any

import httpx


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or refused a query."""


class Prometheus:
    """Instant and range queries against one Prometheus server."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        try:
            answer = self._client.get(path, params=params)
        except httpx.HTTPError as error:
            raise PrometheusError(f"Prometheus unreachable: {error}") from error
        body = (
            answer.json()
            if answer.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if answer.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(
                f"query failed ({answer.status_code}): {body.get('error', answer.text[:200])}"
            )
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def instant(self, promql: str, at: float) -> dict[str, float]:
        """Each series' value at `at` (unix seconds), keyed by its labels; NaN dropped."""
        found: dict[str, float] = {}
        for series in self._get("/api/v1/query", {"query": promql, "time": f"{at:.3f}"}):
            value = float(series["value"][1])
            if not math.isnan(value):
                found[_key(series["metric"])] = value
        return found

    def scalar(self, promql: str, at: float) -> float | None:
        """The single value of a query that sums to one series, or None without data."""
        values = self.instant(promql, at)
        return next(iter(values.values())) if values else None

    def range(
        self, promql: str, start: float, end: float, step_s: float
    ) -> dict[str, list[tuple[float, float]]]:
        """Each series' (time, value) points over [start, end]; NaN points dropped."""
        params = {
            "query": promql,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step_s:.3f}",
        }
        found: dict[str, list[tuple[float, float]]] = {}
        for series in self._get("/api/v1/query_range", params):
            points = [(float(t), float(v)) for t, v in series["values"] if not math.isnan(float(v))]
            found[_key(series["metric"])] = points
        return found


def _key(labels: dict[str, str]) -> str:
    """A series' name in a report: its `job` (or `method`), else all its labels."""
    for name in ("job", "method"):
        if name in labels:
            return labels[name]
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "all"
