"""The SLA report: availability, latency percentiles, error rate and CPU/memory use over a
window, from a Prometheus that scrapes the suite with deploy/prometheus/prometheus.yml.

The SLI is launcher/sli.py's, as the alert rules and the canary gates use it: the
router's client RPCs (health checks and reflection left out), a server-side gRPC code
counting as an error; latency is the router's unary client RPCs (a whole answer), streams
are shown by time to first token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sluice.launcher import sli
from sluice.launcher.report.model import Chart, Measure, Report
from sluice.launcher.report.prometheus import Prometheus

SERVER_ERROR_CODES = sli.SERVER_ERRORS
REQUESTS = f"sluice_rpc_requests_total{{{sli.ROUTER_RPCS}}}"
ERRORS = f'sluice_rpc_requests_total{{{sli.ROUTER_RPCS},code=~"{sli.SERVER_ERRORS}"}}'
UNARY_BUCKETS = f"sluice_rpc_duration_seconds_bucket{{{sli.ROUTER_UNARY_RPCS}}}"
TTFT_BUCKETS = "sluice_router_time_to_first_token_seconds_bucket"
PARTS = '{job=~"sluice-.*"}'


@dataclass(frozen=True)
class Targets:
    """The SLA (docs/operations.md, "SLA")."""

    availability_pct: float = 99.9
    p99_s: float = 3.0
    error_rate_pct: float = 0.1
    cpu_pct: float = 70.0
    memory_pct: float = 80.0


@dataclass(frozen=True)
class Window:
    """The reported period: `since_s` seconds up to `end` (unix seconds)."""

    since_s: float
    end: float
    rate_window: str = "1m"

    @property
    def start(self) -> float:
        return self.end - self.since_s

    @property
    def range(self) -> str:
        return f"{max(1, round(self.since_s))}s"

    @property
    def step_s(self) -> float:
        return max(1.0, self.since_s / 120)


def parse_duration(text: str) -> float:
    """ "90s", "15m", "6h", "7d" (or plain seconds) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    try:
        unit = units.get(text[-1:], 0)
        seconds = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 6h, 7d)") from None
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def _delta(selector: str, window: str, *, by: str = "", exact: bool = True) -> str:
    """What `selector` counted in the window. Exact: the value at the end minus the value
    at the start (series born inside the window count from zero), with no extrapolation,
    so the report's counts equal the parts' own counters. After a counter reset (a part
    restarted) only increase() is right, which extrapolates to the window's edges."""
    group = f" by ({by}) " if by else ""
    if not exact:
        return f"sum{group}(increase({selector}[{window}]))"
    now = f"sum{group}({selector})"
    return f"({now} - (sum{group}({selector} offset {window}) or 0 * {now}))"


def _quantile(q: float, buckets: str, window: str, *, exact: bool = True) -> str:
    return f"histogram_quantile({q}, {_delta(buckets, window, by='le', exact=exact)})"


def sla_report(
    prometheus: Prometheus,
    window: Window,
    *,
    targets: Targets = Targets(),
    cpu_limit_cores: float | None = None,
    memory_limit_bytes: float | None = None,
) -> Report:
    """Measures and charts for `window`. Limits exported by the parts (cgroup) win over
    the given fallbacks; without either, CPU and memory are shown but not judged."""
    at, span = window.end, window.range
    report = Report(
        title="Sluice SLA report",
        period=(
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(window.start))} to "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(at))} UTC ({span})"
        ),
    )
    resets = prometheus.scalar(
        f"sum(resets({REQUESTS}[{span}])) + sum(resets(process_start_time_seconds{PARTS}[{span}]))",
        at,
    )
    exact = not resets
    if not exact:
        report.notes.append(
            "A part restarted in the window (a counter reset): counts are increase() "
            "estimates, extrapolated to the window's edges."
        )
    total = prometheus.scalar(_delta(REQUESTS, span, exact=exact), at)
    errors = prometheus.scalar(_delta(ERRORS, span, exact=exact), at) or 0.0
    report.measures.append(Measure("Requests (router client RPCs)", total, ""))
    if not total:
        report.notes.append("No router requests in the window: availability is not judged.")
        availability = error_rate = None
    else:
        error_rate = 100.0 * errors / total
        availability = 100.0 - error_rate
    report.measures += [
        _judged(
            "Availability",
            availability,
            "%",
            f">= {targets.availability_pct} %",
            lambda v: v >= targets.availability_pct,
        ),
        _judged(
            "Error rate (server errors)",
            error_rate,
            "%",
            f"< {targets.error_rate_pct} %",
            lambda v: v < targets.error_rate_pct,
        ),
    ]
    for q in (0.5, 0.95, 0.99):
        value = prometheus.scalar(_quantile(q, UNARY_BUCKETS, span, exact=exact), at)
        name = f"Latency p{round(q * 100)} (unary answers)"
        if q == 0.99:
            report.measures.append(
                _judged(name, value, "s", f"< {targets.p99_s} s", lambda v: v < targets.p99_s)
            )
        else:
            report.measures.append(Measure(name, value, "s"))
    ttft = prometheus.scalar(_quantile(0.99, TTFT_BUCKETS, span, exact=exact), at)
    report.measures.append(Measure("Time to first token p99 (streams)", ttft, "s"))
    report.measures += _resources(prometheus, window, targets, cpu_limit_cores, memory_limit_bytes)
    if not any(m.name.startswith("CPU") and m.ok is not None for m in report.measures):
        report.notes.append(
            "No CPU or memory limit is exported (no cgroup limit) and none was given "
            "(--cpu-limit, --memory-limit-mb): use is shown, not judged."
        )
    report.charts += _charts(prometheus, window)
    return report


def _judged(
    name: str, value: float | None, unit: str, target: str, passes: Callable[[float], bool]
) -> Measure:
    ok = None if value is None else passes(value)
    return Measure(name, value, unit, target, ok)


def _resources(
    prometheus: Prometheus,
    window: Window,
    targets: Targets,
    cpu_limit: float | None,
    memory_limit: float | None,
) -> list[Measure]:
    at, span = window.end, window.range
    cpu_peak = prometheus.instant(
        f"max_over_time(rate(process_cpu_seconds_total{PARTS}[{window.rate_window}])"
        f"[{span}:{window.step_s:g}s])",
        at,
    )
    cpu_limits = prometheus.instant(f"max_over_time(sluice_resource_limit_cpu_cores[{span}])", at)
    memory_peak = prometheus.instant(
        f"max_over_time(process_resident_memory_bytes{PARTS}[{span}])", at
    )
    memory_limits = prometheus.instant(
        f"max_over_time(sluice_resource_limit_memory_bytes[{span}])", at
    )
    found: list[Measure] = []
    for job, cores in sorted(cpu_peak.items()):
        limit = cpu_limits.get(job, cpu_limit)
        if limit:
            share = 100.0 * cores / limit
            found.append(
                _judged(
                    f"CPU peak {job} (% of {limit:g} cores)",
                    share,
                    "%",
                    f"< {targets.cpu_pct} %",
                    lambda v: v < targets.cpu_pct,
                )
            )
        else:
            found.append(Measure(f"CPU peak {job}", cores, "cores"))
    for job, rss in sorted(memory_peak.items()):
        limit = memory_limits.get(job, memory_limit)
        if limit:
            share = 100.0 * rss / limit
            found.append(
                _judged(
                    f"Memory peak {job} (% of {limit / 1e6:.0f} MB)",
                    share,
                    "%",
                    f"< {targets.memory_pct} %",
                    lambda v: v < targets.memory_pct,
                )
            )
        else:
            found.append(Measure(f"Memory peak {job}", rss / 1e6, "MB"))
    return found


def _charts(prometheus: Prometheus, window: Window) -> list[Chart]:
    rw = window.rate_window

    def points(promql: str) -> dict[str, list[tuple[float, float]]]:
        found = prometheus.range(promql, window.start, window.end, window.step_s)
        return {
            name: [((t - window.end) / 60.0, v) for t, v in series]
            for name, series in found.items()
        }

    traffic = {
        "requests/s": next(iter(points(f"sum(rate({REQUESTS}[{rw}]))").values()), []),
        "server errors/s": next(iter(points(f"sum(rate({ERRORS}[{rw}]))").values()), []),
    }
    latency = {
        f"p{round(q * 100)}": next(
            iter(
                points(
                    f"histogram_quantile({q}, sum by (le) (rate({UNARY_BUCKETS}[{rw}])))"
                ).values()
            ),
            [],
        )
        for q in (0.5, 0.99)
    }
    return [
        Chart("traffic", "Router requests and server errors", "per second", traffic),
        Chart("latency", "Unary answer latency", "seconds", latency),
        Chart(
            "cpu", "CPU per part", "cores", points(f"rate(process_cpu_seconds_total{PARTS}[{rw}])")
        ),
        Chart(
            "memory",
            "Resident memory per part",
            "MB",
            points(f"process_resident_memory_bytes{PARTS} / 1e6"),
        ),
    ]
