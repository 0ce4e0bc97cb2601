"""The optional `feedback_score` canary gate: off by default (the analysis is as
before), the host's verdict from scraped /metrics, and the same verdict from the
rendered PromQL in Prometheus (promtool over synthetic canary and stable series)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sluice.launcher.k8s.render import manifests
from sluice.launcher.k8s.rollout import CANARY_POOL, STABLE_POOL, router_gate_queries
from sluice.launcher.k8s.values import load_values
from sluice.launcher.rollout import gates
from sluice.launcher.rollout.gates import Figures, evaluate, failed, parse_figures
from sluice.launcher.rollout.settings import RolloutSettings
from tests.prometheus_tools import assert_promtool_tests_pass

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
ON = RolloutSettings(feedback_gate=True, max_feedback_score_drop=0.5, min_feedback_samples=30)

METRICS = """\
# TYPE sluice_router_feedback_score histogram
sluice_router_feedback_score_bucket{le="1.0",pool="green"} 10.0
sluice_router_feedback_score_bucket{le="2.0",pool="green"} 10.0
sluice_router_feedback_score_bucket{le="3.0",pool="green"} 20.0
sluice_router_feedback_score_bucket{le="4.0",pool="green"} 20.0
sluice_router_feedback_score_bucket{le="5.0",pool="green"} 40.0
sluice_router_feedback_score_bucket{le="+Inf",pool="green"} 40.0
sluice_router_feedback_score_count{pool="green"} 40.0
sluice_router_feedback_score_sum{pool="green"} 140.0
# TYPE sluice_router_feedback_total counter
sluice_router_feedback_total{pool="green",verdict="positive"} 20.0
sluice_router_feedback_total{pool="green",verdict="unmatched"} 7.0
"""


def _scores(count: float, mean: float) -> Figures:
    return Figures(requests=1000, ok=1000, feedback_count=count, feedback_sum=count * mean)


def test_figures_read_the_score_histograms_sum_and_count() -> None:
    figures = parse_figures(METRICS)
    assert (figures.feedback_count, figures.feedback_sum) == (40, 140)
    later = Figures(feedback_count=50, feedback_sum=160)
    assert (later.since(figures).feedback_count, later.since(figures).feedback_sum) == (10, 20)


def test_the_gate_is_off_by_default() -> None:
    results = evaluate(_scores(100, 1.0), _scores(100, 5.0), RolloutSettings())
    assert "feedback_score" not in {r.gate for r in results}
    assert gates.gate_names(RolloutSettings()) == list(gates.PROMQL)


@pytest.mark.parametrize(
    ("candidate", "baseline", "passes"),
    [
        (_scores(40, 4.0), _scores(200, 4.2), True),  # within the allowed drop
        (_scores(40, 3.5), _scores(200, 4.2), False),  # 0.7 below: rolls back
        (_scores(29, 1.0), _scores(200, 4.8), True),  # too few votes: no verdict
        (_scores(40, 1.0), _scores(29, 4.8), True),  # baseline too few: nothing to compare
        (_scores(40, 1.0), Figures(), True),  # no baseline feedback at all
        (_scores(40, 4.9), _scores(200, 3.0), True),  # better than the baseline
    ],
)
def test_the_host_gate(candidate: Figures, baseline: Figures, passes: bool) -> None:
    (result,) = [r for r in evaluate(candidate, baseline, ON) if r.gate == "feedback_score"]
    assert result.passed is passes
    crossed = [r.gate for r in failed(evaluate(candidate, baseline, ON))]
    assert crossed == ([] if passes else ["feedback_score"])
    if not passes:
        assert result.describe().startswith("feedback_score 3.5 < limit 3.7")


def _analysis(settings: dict[str, Any]) -> dict[str, Any]:
    base = load_values(K8S / "values.yaml")["base"]
    changed = base.model_copy(update={"suite": base.suite | {"rollout": settings}})
    (template,) = [
        m for m in manifests(changed, K8S)["router.yaml"] if m["kind"] == "AnalysisTemplate"
    ]
    return template


def test_the_analysis_template_has_the_gate_only_when_enabled() -> None:
    names = [m["name"] for m in _analysis({})["spec"]["metrics"]]
    assert "feedback-score" not in names
    enabled = _analysis(
        {"feedback_gate": True, "max_feedback_score_drop": 0.25, "min_feedback_samples": 50}
    )
    metrics = {m["name"]: m for m in enabled["spec"]["metrics"]}
    assert [*names, "feedback-score"] == list(metrics)
    query = metrics["feedback-score"]["provider"]["prometheus"]["query"]
    settings = RolloutSettings(
        feedback_gate=True, max_feedback_score_drop=0.25, min_feedback_samples=50
    )
    assert query == router_gate_queries(settings, "2m")["feedback_score"]
    assert "- 0.25)" in query and ">= 50" in query
    assert gates.promql("feedback_score", CANARY_POOL, "2m", settings=settings) in query
    assert gates.promql("feedback_score", STABLE_POOL, "2m", settings=settings) in query


def _series(pool: str, scores: dict[int, int]) -> list[dict[str, str]]:
    """Per minute, `scores[s]` votes of score s for `pool` (histogram sum and count)."""
    count = sum(scores.values())
    total = sum(s * n for s, n in scores.items())
    at = f'pool="{pool}"'
    rpc = 'service="router",method="/sluice.router.v1.RouterService/Generate",code="OK"'
    return [
        {"series": f"sluice_router_feedback_score_count{{{at}}}", "values": f"0+{count}x15"},
        {"series": f"sluice_router_feedback_score_sum{{{at}}}", "values": f"0+{total}x15"},
        {"series": f"sluice_rpc_requests_total{{{rpc},{at}}}", "values": "0+100x15"},
    ]


SCENARIOS = {
    # name: (canary votes per minute, stable votes per minute); 2-minute window
    "as good": ({5: 20, 4: 10}, {5: 60, 4: 30}),
    "worse": ({5: 5, 2: 20, 1: 5}, {5: 60, 4: 30}),
    "too few canary votes": ({1: 10}, {5: 60}),
    "too few stable votes": ({1: 20}, {5: 10}),
    "no stable votes": ({1: 20}, {}),
}


def test_prometheus_and_the_host_judge_the_feedback_gate_alike(tmp_path: Path) -> None:
    settings = RolloutSettings(feedback_gate=True, min_feedback_samples=30)
    query = (
        router_gate_queries(settings, "2m")["feedback_score"]
        .replace("{{args.namespace}}", "sluice")
        .replace("{{args.canary-hash}}", "c1")
        .replace("{{args.stable-hash}}", "s1")
    )
    tests = []
    verdicts = {}
    for name, (canary, stable) in SCENARIOS.items():
        series = _series("sluice/c1", canary)
        if stable:
            series += _series("sluice/s1", stable)
        series += _series("other/c1", {1: 500})  # another namespace's pool: never counted

        def figures(votes: dict[int, int]) -> Figures:
            return Figures(
                feedback_count=2 * sum(votes.values()),
                feedback_sum=2 * sum(s * n for s, n in votes.items()),
            )

        (host,) = [
            r
            for r in evaluate(figures(canary), figures(stable), settings)
            if r.gate == "feedback_score"
        ]
        verdicts[name] = host.passed
        check = {
            "expr": f"({query}) > bool 0",
            "eval_time": "10m",
            "exp_samples": [{"labels": "{}", "value": 0 if host.passed else 1}],
        }
        tests.append({"interval": "1m", "input_series": series, "promql_expr_test": [check]})
    assert verdicts == {
        "as good": True,
        "worse": False,
        "too few canary votes": True,
        "too few stable votes": True,
        "no stable votes": True,
    }
    assert_promtool_tests_pass(tmp_path / "feedback.test.yml", {"rule_files": [], "tests": tests})


def _exposition(pool: str, votes: dict[int, int]) -> str:
    """A router's /metrics text after `votes[s]` scores of s (what the host scrapes)."""
    lines = ["# TYPE sluice_router_feedback_score histogram"]
    running = 0
    for bound in (1, 2, 3, 4, 5):
        running += votes.get(bound, 0)
        lines.append(
            f'sluice_router_feedback_score_bucket{{le="{bound}.0",pool="{pool}"}} {running}'
        )
    lines.append(f'sluice_router_feedback_score_bucket{{le="+Inf",pool="{pool}"}} {running}')
    lines.append(f'sluice_router_feedback_score_count{{pool="{pool}"}} {running}')
    total = sum(s * n for s, n in votes.items())
    lines.append(f'sluice_router_feedback_score_sum{{pool="{pool}"}} {total}')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("canary_votes", "rolls_back"),
    [
        ({5: 25, 4: 10, 1: 5}, False),  # mean 4.1 against 4.3
        ({5: 10, 2: 10, 1: 20}, True),  # mean 2.25 against 4.3
        ({1: 10}, True),  # 10 votes of 1 ...
    ],
)
def test_scraped_metric_text_rolls_a_canary_back_or_lets_it_pass(
    canary_votes: dict[int, int], rolls_back: bool
) -> None:
    start = parse_figures(_exposition("blue", {}))
    baseline = parse_figures(_exposition("blue", {5: 200, 4: 60, 1: 40})).since(start)
    settings = ON if canary_votes != {1: 10} else ON.model_copy(update={"min_feedback_samples": 5})
    candidate = parse_figures(_exposition("green", canary_votes)).since(Figures())
    crossed = [r.gate for r in failed(evaluate(candidate, baseline, settings))]
    assert crossed == (["feedback_score"] if rolls_back else [])
    # ... which the default minimum (30) would not yet judge.
    assert failed(evaluate(parse_figures(_exposition("green", {1: 10})), baseline, ON)) == []
