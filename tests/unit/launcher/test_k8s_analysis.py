"""The router's Argo Rollouts analysis is `sluice rollout canary`'s gates: its queries are
rendered from launcher/rollout/gates.py with the suite's `rollout` thresholds, the
PodMonitor gives each Rollout pod the `pool` label they select on, and Prometheus
(promtool over synthetic canary and stable series) reaches the verdicts the host's
`evaluate` reaches on the same counts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.launcher.k8s.render import manifests
from sluice.launcher.k8s.rollout import CANARY_POOL, STABLE_POOL, router_gate_queries
from sluice.launcher.k8s.values import load_values
from sluice.launcher.rollout import gates
from sluice.launcher.rollout.settings import RolloutSettings
from tests.prometheus_tools import assert_promtool_tests_pass

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
OUTPUTS = ("base", "staging", "production")


def _named(output: str, kind: str, name: str) -> dict[str, Any]:
    found = []
    for path in sorted((K8S / output).glob("*.yaml")):
        found += [
            doc
            for doc in yaml.safe_load_all(path.read_text())
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name
        ]
    (resource,) = found
    assert isinstance(resource, dict)
    return resource


def _queries(template: dict[str, Any]) -> dict[str, str]:
    return {
        m["name"].replace("-", "_"): m["provider"]["prometheus"]["query"]
        for m in template["spec"]["metrics"]
    }


@pytest.mark.parametrize("output", OUTPUTS)
def test_the_router_analysis_renders_the_host_canary_gates(output: str) -> None:
    template = _named(output, "AnalysisTemplate", "sluice-router-canary")
    queries = _queries(template)
    assert set(queries) == set(gates.PROMQL)
    window = "2m"
    defaults = RolloutSettings()
    for gate, query in queries.items():
        canary = gates.promql(gate, CANARY_POOL, window)
        stable = gates.promql(gate, STABLE_POOL, window)
        # Each side is gates.py's own query, untouched, and the whole is its comparison.
        assert canary in query and stable in query, gate
        excess = gates.excess_promql(gate, canary, stable, defaults)
        requests = gates.requests_promql(CANARY_POOL, window)
        assert query == gates.judged_promql(excess, requests, defaults), gate
        assert f">= {defaults.min_requests}" in query
    assert "- 0.01" in queries["error_rate"]
    assert "(2 * " in queries["latency_p99"] and "+ 0.25)" in queries["latency_p99"]
    assert "(2 * " in queries["ttft_p99"] and "+ 0.15)" in queries["ttft_p99"]
    for metric in template["spec"]["metrics"]:
        assert metric["successCondition"] == "len(result) > 0 && result[0] <= 0"
        assert metric["failureCondition"] == "len(result) > 0 && result[0] > 0"
    # The Rollout passes the hashes and namespace that make up the pools.
    rollout = _named(output, "Rollout", "sluice-router")
    args = {
        a["name"]: a["valueFrom"] for a in rollout["spec"]["strategy"]["canary"]["analysis"]["args"]
    }
    assert args == {
        "canary-hash": {"podTemplateHashValue": "Latest"},
        "stable-hash": {"podTemplateHashValue": "Stable"},
        "namespace": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    assert {a["name"] for a in template["spec"]["args"]} == set(args)


def test_the_suite_rollout_settings_set_the_cluster_thresholds() -> None:
    base = load_values(K8S / "values.yaml")["base"]
    changed = base.model_copy(
        update={
            "suite": base.suite | {"rollout": {"max_error_rate_increase": 0.05, "min_requests": 50}}
        }
    )
    (template,) = [
        m for m in manifests(changed, K8S)["router.yaml"] if m["kind"] == "AnalysisTemplate"
    ]
    queries = _queries(template)
    settings = RolloutSettings(max_error_rate_increase=0.05, min_requests=50)
    assert queries == router_gate_queries(settings, "2m")
    assert "- 0.05" in queries["error_rate"] and ">= 50" in queries["error_rate"]


def _relabel(rule: dict[str, Any], meta: dict[str, str]) -> str | None:
    """Prometheus's `replace` relabeling of one target (anchored regex)."""
    source = rule.get("separator", ";").join(meta.get(name, "") for name in rule["sourceLabels"])
    match = re.fullmatch(rule.get("regex", "(.*)"), source)
    return None if match is None else match.expand(rule["replacement"].replace("$1", r"\1"))


def test_the_pod_monitor_labels_each_rollout_pod_with_its_pool() -> None:
    monitor = _named("base", "PodMonitor", "sluice")
    (endpoint,) = [e for e in monitor["spec"]["podMetricsEndpoints"] if e["port"] == "metrics"]
    (rule,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "pool"]
    canary_pod = {
        "__meta_kubernetes_namespace": "sluice",
        "__meta_kubernetes_pod_label_rollouts_pod_template_hash": "6d4f8b9c7",
    }
    assert _relabel(rule, canary_pod) == "sluice/6d4f8b9c7"
    assert _relabel(rule, {"__meta_kubernetes_namespace": "sluice"}) is None  # a Deployment's
    pool = CANARY_POOL.replace("{{args.namespace}}", "sluice").replace(
        "{{args.canary-hash}}", "6d4f8b9c7"
    )
    assert pool == "sluice/6d4f8b9c7"  # what the analysis asks for


# Prometheus against the host's `evaluate` on the same traffic. Per pool and minute:
# requests and server errors, back-end attempts and errors, and which histogram bucket
# the durations and first tokens fall in.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Minute:
    requests: int
    errors: int = 0
    attempts: int = 0
    backend_errors: int = 0
    latency: dict[float, int] = field(default_factory=dict)
    """Observations per bucket upper bound (not cumulative)."""
    ttft: dict[float, int] = field(default_factory=dict)

    def cumulative(self, per_bucket: dict[float, int]) -> dict[float, float]:
        total, out = 0.0, {}
        for bound in (*BUCKETS, float("inf")):
            total += per_bucket.get(bound, 0)
            out[bound] = total
        return out

    def figures(self, minutes: int) -> gates.Figures:
        """What the host scrapes over `minutes` of this traffic."""
        return gates.Figures(
            requests=self.requests * minutes,
            server_errors=self.errors * minutes,
            ok=(self.requests - self.errors) * minutes,
            attempts=self.attempts * minutes,
            backend_errors=self.backend_errors * minutes,
            latency={b: c * minutes for b, c in self.cumulative(self.latency).items()},
            ttft={b: c * minutes for b, c in self.cumulative(self.ttft).items()},
        )

    def series(self, pool: str) -> list[dict[str, str]]:
        rpc = 'service="router",method="/sluice.router.v1.RouterService/Stream"'
        at = f'pool="{pool}"'
        out: list[tuple[str, float]] = [
            (f'sluice_rpc_requests_total{{{rpc},code="OK",{at}}}', self.requests - self.errors),
            (f'sluice_rpc_requests_total{{{rpc},code="INTERNAL",{at}}}', self.errors),
            (f'sluice_router_backend_attempts_total{{backend="b",{at}}}', self.attempts),
            (f'sluice_router_backend_errors_total{{backend="b",{at}}}', self.backend_errors),
        ]
        for bound, count in self.cumulative(self.latency).items():
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append((f'sluice_rpc_duration_seconds_bucket{{{rpc},le="{le}",{at}}}', count))
        for bound, count in self.cumulative(self.ttft).items():
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            name = "sluice_router_time_to_first_token_seconds_bucket"
            out.append((f'{name}{{model="m",le="{le}",{at}}}', count))
        # Health checks never count, whatever they answer.
        health = 'service="router",method="/grpc.health.v1.Health/Check",code="UNAVAILABLE"'
        out.append((f"sluice_rpc_requests_total{{{health},{at}}}", 50))
        return [{"series": name, "values": f"0+{int(inc)}x15"} for name, inc in out]


FAST = {0.1: 90, 0.25: 10}  # p99 about 0.24 s
SLOW = {1.0: 10, 2.5: 90}  # +1 s injected: p99 about 2.5 s
STABLE = Minute(requests=300, errors=3, attempts=300, backend_errors=3, latency=FAST, ttft=FAST)
SCENARIOS: dict[str, tuple[Minute, Minute | None, str]] = {
    # name: (canary, stable, what every gate must say)
    "good canary": (
        Minute(requests=100, errors=1, attempts=100, backend_errors=1, latency=FAST, ttft=FAST),
        STABLE,
        "pass",
    ),
    "bad canary": (
        Minute(requests=100, errors=6, attempts=100, backend_errors=9, latency=SLOW, ttft=SLOW),
        STABLE,
        "fail",
    ),
    # Fewer than min_requests (20) in the 2-minute window: no verdict (inconclusive).
    "quiet canary": (
        Minute(requests=5, errors=5, attempts=5, backend_errors=5, latency=SLOW, ttft=SLOW),
        STABLE,
        "none",
    ),
    # No stable traffic: rates against a perfect baseline, latencies not compared.
    "no baseline": (
        Minute(requests=100, errors=0, attempts=100, backend_errors=0, latency=SLOW, ttft=SLOW),
        None,
        "pass",
    ),
}


def _promtool(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    assert_promtool_tests_pass(tmp_path / "analysis.test.yml", {"rule_files": [], "tests": tests})


def test_prometheus_and_the_host_judge_a_canary_alike_with_promtool(tmp_path: Path) -> None:
    template = _named("base", "AnalysisTemplate", "sluice-router-canary")
    queries = {
        gate: query.replace("{{args.namespace}}", "sluice")
        .replace("{{args.canary-hash}}", "c1")
        .replace("{{args.stable-hash}}", "s1")
        for gate, query in _queries(template).items()
    }
    settings = RolloutSettings()
    tests = []
    for name, (canary, stable, expected) in SCENARIOS.items():
        series = canary.series("sluice/c1")
        if stable is not None:
            series += stable.series("sluice/s1")
        # The same canary hash in another namespace is another pool: never counted.
        series += SCENARIOS["bad canary"][0].series("other/c1")
        host = {
            r.gate: r.passed
            for r in gates.evaluate(canary.figures(2), (stable or Minute(0)).figures(2), settings)
        }
        checks: list[dict[str, Any]] = []
        for gate, query in queries.items():
            if expected == "none":  # the host holds the step: no verdict yet
                assert canary.requests * 2 < settings.min_requests
                checks.append({"expr": query, "eval_time": "10m", "exp_samples": []})
                continue
            assert host[gate] is (expected == "pass"), (name, gate)
            # 1 when the gate fails (Argo's failureCondition), 0 when it passes.
            checks.append(
                {
                    "expr": f"({query}) > bool 0",
                    "eval_time": "10m",
                    "exp_samples": [{"labels": "{}", "value": 0 if host[gate] else 1}],
                }
            )
        tests.append({"interval": "1m", "input_series": series, "promql_expr_test": checks})
    _promtool(tmp_path, tests)


def test_every_rendered_gate_query_parses_with_promtool(tmp_path: Path) -> None:
    # An expression test of each query over no series: promtool parses and evaluates it.
    template = _named("production", "AnalysisTemplate", "sluice-router-canary")
    checks = [
        {
            "expr": query.replace("{{args.namespace}}", "ns")
            .replace("{{args.canary-hash}}", "a")
            .replace("{{args.stable-hash}}", "b"),
            "eval_time": "1m",
            "exp_samples": [],
        }
        for query in _queries(template).values()
    ]
    _promtool(tmp_path, [{"interval": "1m", "input_series": [], "promql_expr_test": checks}])
