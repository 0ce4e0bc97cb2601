"""A small client of Prometheus's HTTP query API (instant and range queries).

The standard library's urllib, not httpx: `sluice report` ships in the runtime install
(the image), where httpx is a development tool only (docs/dependencies.md)."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or refused a query."""


class Prometheus:
    """Instant and range queries against one Prometheus server."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise PrometheusError(f"Prometheus URL must be http(s): {base_url!r}")
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s

    def close(self) -> None:
        """Nothing to release: each query is its own request."""

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        url = f"{self._base}{path}?{urllib.parse.urlencode(params)}"
        try:
            # The scheme is checked in __init__ (http or https only).
            with urllib.request.urlopen(url, timeout=self._timeout_s) as answer:  # noqa: S310  # nosec B310
                status, text = answer.status, answer.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as error:
            raise PrometheusError(f"Prometheus unreachable: {error}") from error
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            body = {}
        if status != 200 or body.get("status") != "success":
            raise PrometheusError(f"query failed ({status}): {body.get('error', text[:200])}")
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
