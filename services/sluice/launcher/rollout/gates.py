"""The canary's gates: which router metrics compare the candidate pool with the
baseline, and the thresholds that roll a canary back.

One place for both forms of each gate: the figures `sluice rollout canary` computes from
the routers' own /metrics (scraped per replica, summed per pool over the step), and the
same quantity as PromQL over a `pool` label, for Prometheus-driven analysis (an Argo
Rollouts AnalysisTemplate, dashboards). docs/deployment.md lists them.

Gate names: `error_rate`, `upstream_error_rate`, `success_rate`, `latency_p99`,
`ttft_p99`, and `feedback_score` when `rollout.feedback_gate` is on (users' scores of
answers, router/feedback.py; off by default, so the default analysis is unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from string import Template

from prometheus_client.parser import text_string_to_metric_families

from sluice.launcher import sli
from sluice.launcher.rollout.settings import RolloutSettings

# Re-exported: the codes the gates count as the service's failures (launcher/sli.py).
SERVER_ERROR_CODES = sli.SERVER_ERROR_CODES

_SERVER_ERRORS = sli.SERVER_ERRORS
_RPC = sli.ROUTER_RPCS
"""Router RPCs that serve clients (health checks and reflection left out): the SLI."""

REQUESTS = "sluice_rpc_requests_total"
DURATION = "sluice_rpc_duration_seconds"
TTFT = "sluice_router_time_to_first_token_seconds"
ATTEMPTS = "sluice_router_backend_attempts_total"
BACKEND_ERRORS = "sluice_router_backend_errors_total"
FEEDBACK_SCORE = "sluice_router_feedback_score"
"""Histogram of counted feedback scores (1..5), labelled with the pool that answered."""

_SERIES = {
    "requests": f"{REQUESTS}{{{_RPC},$pool}}",
    "server_errors": f'{REQUESTS}{{{_RPC},$pool,code=~"{_SERVER_ERRORS}"}}',
    "ok": f'{REQUESTS}{{{_RPC},$pool,code="OK"}}',
    "duration": f"{DURATION}_bucket{{{_RPC},$pool}}",
    "ttft": f"{TTFT}_bucket{{$pool}}",
    "attempts": f"{ATTEMPTS}{{$pool}}",
    "backend_errors": f"{BACKEND_ERRORS}{{$pool}}",
}
PROMQL: dict[str, str] = {
    "error_rate": (
        f"sum(rate({_SERIES['server_errors']}[$window]))"
        f" / sum(rate({_SERIES['requests']}[$window]))"
    ),
    "upstream_error_rate": (
        f"sum(rate({_SERIES['backend_errors']}[$window]))"
        f" / sum(rate({_SERIES['attempts']}[$window]))"
    ),
    "success_rate": (
        f"sum(rate({_SERIES['ok']}[$window])) / sum(rate({_SERIES['requests']}[$window]))"
    ),
    "latency_p99": f"histogram_quantile(0.99, sum by (le) (rate({_SERIES['duration']}[$window])))",
    "ttft_p99": f"histogram_quantile(0.99, sum by (le) (rate({_SERIES['ttft']}[$window])))",
}
"""Each gate's quantity for one pool: `$pool` is a label matcher (`pool_selector`),
`$window` a range such as `1m` (string.Template placeholders)."""

FEEDBACK_GATE = "feedback_score"
FEEDBACK_PROMQL = (
    f"(sum(rate({FEEDBACK_SCORE}_sum{{$pool}}[$window]))"
    f" / sum(rate({FEEDBACK_SCORE}_count{{$pool}}[$window])) >= 0)"
    f" and on() (sum(increase({FEEDBACK_SCORE}_count{{$pool}}[$window])) >= $samples)"
)
"""A pool's mean feedback score within the window, only once it has `$samples` scores
(none otherwise: too few votes are no figure)."""


def gate_names(settings: RolloutSettings) -> list[str]:
    """The gates `settings` turn on, in report order."""
    return [*PROMQL, *([FEEDBACK_GATE] if settings.feedback_gate else [])]


REQUESTS_PROMQL = f"sum(increase({_SERIES['requests']}[$window]))"
"""Client requests a pool answered within the window: the `min_requests` guard."""


def pool_selector(pool: str, *, baseline: bool = False) -> str:
    """The label matcher of a pool (`pool="green"`), or of everything else when it is the
    candidate and the baseline is wanted (`pool!="green"`: routers started with the suite
    carry no pool label)."""
    return f'pool{"!=" if baseline else "="}"{pool}"'


def promql(
    gate: str,
    pool: str,
    window: str,
    *,
    baseline: bool = False,
    settings: RolloutSettings | None = None,
) -> str:
    """The PromQL of `gate` for the candidate `pool` (or its baseline); `settings` give
    `feedback_score` its minimum sample count."""
    selector = pool_selector(pool, baseline=baseline)
    if gate == FEEDBACK_GATE:
        samples = (settings or RolloutSettings()).min_feedback_samples
        return Template(FEEDBACK_PROMQL).substitute(pool=selector, window=window, samples=samples)
    return Template(PROMQL[gate]).substitute(pool=selector, window=window)


def requests_promql(pool: str, window: str, *, baseline: bool = False) -> str:
    """The PromQL of the requests `pool` (or its baseline) answered within `window`."""
    template = Template(REQUESTS_PROMQL)
    return template.substitute(pool=pool_selector(pool, baseline=baseline), window=window)


def excess_promql(gate: str, candidate: str, baseline: str, settings: RolloutSettings) -> str:
    """How far the candidate is past the gate's limit, as one PromQL expression over the
    gate's `candidate` and `baseline` queries (from `promql`): at most 0 passes, as
    `evaluate` judges. A missing baseline rate counts as perfect, a missing baseline
    latency and a candidate without data pass (the result is 0); NaN (0/0, a histogram
    without observations) counts as missing (`>= 0` drops it)."""

    def known(query: str) -> str:
        return f"(({query}) >= 0)"

    if gate in ("error_rate", "upstream_error_rate"):
        allowance = (
            settings.max_error_rate_increase
            if gate == "error_rate"
            else settings.max_upstream_error_rate_increase
        )
        excess = f"{known(candidate)} - ({known(baseline)} or vector(0)) - {allowance:g}"
    elif gate == "success_rate":
        floor = f"({known(baseline)} or vector(1)) - {settings.max_success_rate_drop:g}"
        excess = f"({floor}) - {known(candidate)}"
    elif gate in ("latency_p99", "ttft_p99"):
        ratio, slack_ms = (
            (settings.max_latency_p99_ratio, settings.latency_slack_ms)
            if gate == "latency_p99"
            else (settings.max_ttft_p99_ratio, settings.ttft_slack_ms)
        )
        excess = f"{known(candidate)} - ({ratio:g} * {known(baseline)} + {slack_ms / 1000:g})"
    elif gate == FEEDBACK_GATE:
        # Both sides come without a sample below min_feedback_samples: then it passes.
        excess = f"(({baseline}) - {settings.max_feedback_score_drop:g}) - ({candidate})"
    else:
        raise KeyError(gate)
    return f"({excess}) or vector(0)"


def judged_promql(excess: str, requests: str, settings: RolloutSettings) -> str:
    """`excess` only once the candidate answered `min_requests` within the window
    (`requests`, from `requests_promql`); before that no sample, which is no verdict."""
    return f"({excess}) and on() (({requests}) >= {settings.min_requests})"


@dataclass
class Figures:
    """Cumulative counts of a set of router replicas (one pool), as scraped."""

    requests: float = 0.0
    server_errors: float = 0.0
    ok: float = 0.0
    attempts: float = 0.0
    backend_errors: float = 0.0
    latency: dict[float, float] = field(default_factory=dict)
    """Cumulative histogram buckets (upper bound → count) of client RPC durations."""
    ttft: dict[float, float] = field(default_factory=dict)
    feedback_sum: float = 0.0
    """Sum of the counted feedback scores."""
    feedback_count: float = 0.0

    def add(self, other: Figures) -> None:
        """Sum another replica's figures into these."""
        self.requests += other.requests
        self.server_errors += other.server_errors
        self.ok += other.ok
        self.attempts += other.attempts
        self.backend_errors += other.backend_errors
        self.feedback_sum += other.feedback_sum
        self.feedback_count += other.feedback_count
        for bound, count in other.latency.items():
            self.latency[bound] = self.latency.get(bound, 0.0) + count
        for bound, count in other.ttft.items():
            self.ttft[bound] = self.ttft.get(bound, 0.0) + count

    def since(self, start: Figures) -> Figures:
        """What happened between `start` and these (a restarted replica counts from 0)."""

        def delta(now: float, then: float) -> float:
            return now - then if now >= then else now

        return Figures(
            requests=delta(self.requests, start.requests),
            server_errors=delta(self.server_errors, start.server_errors),
            ok=delta(self.ok, start.ok),
            attempts=delta(self.attempts, start.attempts),
            backend_errors=delta(self.backend_errors, start.backend_errors),
            latency={b: delta(c, start.latency.get(b, 0.0)) for b, c in self.latency.items()},
            ttft={b: delta(c, start.ttft.get(b, 0.0)) for b, c in self.ttft.items()},
            feedback_sum=delta(self.feedback_sum, start.feedback_sum),
            feedback_count=delta(self.feedback_count, start.feedback_count),
        )


def parse_figures(text: str) -> Figures:
    """A router's figures from its /metrics text."""
    figures = Figures()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            client_rpc = labels.get("service") == "router" and sli.is_client_method(
                labels.get("method", "")
            )
            if sample.name == REQUESTS and client_rpc:
                figures.requests += sample.value
                if labels.get("code") in SERVER_ERROR_CODES:
                    figures.server_errors += sample.value
                elif labels.get("code") == "OK":
                    figures.ok += sample.value
            elif sample.name == f"{DURATION}_bucket" and client_rpc:
                bound = float(labels["le"])
                figures.latency[bound] = figures.latency.get(bound, 0.0) + sample.value
            elif sample.name == f"{TTFT}_bucket":
                bound = float(labels["le"])
                figures.ttft[bound] = figures.ttft.get(bound, 0.0) + sample.value
            elif sample.name == ATTEMPTS:
                figures.attempts += sample.value
            elif sample.name == BACKEND_ERRORS:
                figures.backend_errors += sample.value
            elif sample.name == f"{FEEDBACK_SCORE}_sum":
                figures.feedback_sum += sample.value
            elif sample.name == f"{FEEDBACK_SCORE}_count":
                figures.feedback_count += sample.value
    return figures


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """`histogram_quantile` over cumulative buckets (seconds), None without samples."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # as Prometheus: the highest finite bound
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict on a step so far."""

    gate: str
    candidate: float | None
    baseline: float | None
    limit: float | None
    passed: bool

    def describe(self) -> str:
        """`error_rate 0.052 > limit 0.010 (baseline 0.000)`."""

        def show(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4g}"

        relation = (
            "within"
            if self.passed
            else "<"
            if self.gate in ("success_rate", FEEDBACK_GATE)
            else ">"
        )
        return (
            f"{self.gate} {show(self.candidate)} {relation} limit {show(self.limit)} "
            f"(baseline {show(self.baseline)})"
        )


def evaluate(candidate: Figures, baseline: Figures, settings: RolloutSettings) -> list[GateResult]:
    """Every gate on a step's figures (deltas since the step began). A gate with no
    candidate data passes (the caller waits for `min_requests` first); a missing
    baseline rate counts as perfect (no errors); a missing baseline latency passes."""
    results = []
    for gate, value_of, allowance in (
        (
            "error_rate",
            lambda f: _ratio(f.server_errors, f.requests),
            settings.max_error_rate_increase,
        ),
        (
            "upstream_error_rate",
            lambda f: _ratio(f.backend_errors, f.attempts),
            settings.max_upstream_error_rate_increase,
        ),
    ):
        value, base = value_of(candidate), value_of(baseline)
        limit = (base or 0.0) + allowance
        results.append(GateResult(gate, value, base, limit, value is None or value <= limit))
    success, base_success = (
        _ratio(candidate.ok, candidate.requests),
        _ratio(baseline.ok, baseline.requests),
    )
    floor = (1.0 if base_success is None else base_success) - settings.max_success_rate_drop
    results.append(
        GateResult(
            "success_rate", success, base_success, floor, success is None or success >= floor
        )
    )
    for gate, buckets_of, ratio, slack_ms in (
        (
            "latency_p99",
            lambda f: f.latency,
            settings.max_latency_p99_ratio,
            settings.latency_slack_ms,
        ),
        ("ttft_p99", lambda f: f.ttft, settings.max_ttft_p99_ratio, settings.ttft_slack_ms),
    ):
        value, base = quantile(0.99, buckets_of(candidate)), quantile(0.99, buckets_of(baseline))
        # Without a baseline figure there is nothing to compare with.
        bound = None if base is None else base * ratio + slack_ms / 1000
        passed = value is None or bound is None or value <= bound
        results.append(GateResult(gate, value, base, bound, passed))
    if settings.feedback_gate:
        results.append(feedback_result(candidate, baseline, settings))
    return results


def mean_score(figures: Figures, min_samples: int) -> float | None:
    """The mean feedback score, None with fewer than `min_samples` scores."""
    if figures.feedback_count < max(1, min_samples):
        return None
    return figures.feedback_sum / figures.feedback_count


def feedback_result(candidate: Figures, baseline: Figures, settings: RolloutSettings) -> GateResult:
    """Gate `feedback_score`: the candidate's mean score at least the baseline's minus
    `max_feedback_score_drop`; it passes while either side has fewer than
    `min_feedback_samples` scores (no comparison yet)."""
    value = mean_score(candidate, settings.min_feedback_samples)
    base = mean_score(baseline, settings.min_feedback_samples)
    floor = None if base is None else base - settings.max_feedback_score_drop
    passed = value is None or floor is None or value >= floor
    return GateResult(FEEDBACK_GATE, value, base, floor, passed)


def failed(results: Iterable[GateResult]) -> list[GateResult]:
    """The gates that crossed their threshold."""
    return [result for result in results if not result.passed]
