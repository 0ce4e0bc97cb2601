"""Every series a Grafana panel queries exists on a running suite (or is a recording rule)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluice.common.v1 import common_pb2
from sluice.launcher.metrics import SupervisorMetrics
from sluice.launcher.rollout.notify import RolloutMetrics
from sluice.router.v1 import router_pb2
from sluice.telemetry.service import build_server as build_telemetry
from tests.support import (
    AUTH,
    ServiceStack,
    collect,
    eventually,
    metric,
    scrape,
    start_suite,
    telemetry_settings,
    tracing_to,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))

# PromQL words that are not metric names.
FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp_max",
    "clamp_min", "count", "count_over_time", "delta", "deriv", "exp", "floor", "group",
    "histogram_quantile", "increase", "irate", "label_replace", "ln", "max", "max_over_time",
    "min", "min_over_time", "predict_linear", "quantile", "quantile_over_time", "rate", "round",
    "scalar", "sort", "sort_desc", "stddev", "sum", "sum_over_time", "time", "topk", "vector",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}  # fmt: skip
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (labels, ranges, functions removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = GROUPING.sub("", text)
    return {name for name in NAME.findall(text) if name not in FUNCTIONS}


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (service, le) (rate(a_bucket{x="rate(b)"}[5m])))'
        " / ignoring (le) c:rule:ratio_rate1h offset 5m + 1e3 and on (job) d"
    )
    assert metric_names(expr) == {"a_bucket", "c:rule:ratio_rate1h", "d"}


def panel_queries() -> list[tuple[str, str, str]]:
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"] and board["panels"], path.name
        for panel in board["panels"]:
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                found.append((path.name, panel["title"], target["expr"]))
    return found


def test_the_five_dashboards_exist() -> None:
    assert [p.stem for p in DASHBOARDS] == [
        "dependency-map",
        "errors",
        "latency",
        "llm-usage",
        "request-flow",
    ]


def supervisor_series() -> set[str]:
    """The series `sluice up`'s supervisor exposes during a rollout (the rollout e2e test,
    tests/e2e/test_rollouts.py, checks them on a real supervisor)."""
    supervisor = SupervisorMetrics()
    rollout = RolloutMetrics(supervisor.registry)
    supervisor.add("router", "router")
    rollout.steps.labels("canary", "green").inc()
    rollout.rollbacks.labels("router", "v2", "canary", "error_rate").inc()
    rollout.decisions.labels("canary", "step").inc()
    rollout.weight.labels("green").set(5)
    rollout.gate.labels("error_rate", "candidate").set(0)
    return {
        sample.name
        for family in text_string_to_metric_families(generate_latest(supervisor.registry).decode())
        for sample in family.samples
    }


async def test_every_panel_queries_series_the_suite_exposes(stack: ServiceStack) -> None:
    telemetry = await stack.start(build_telemetry(telemetry_settings()))
    suite = await start_suite(stack, tracing=tracing_to(telemetry.port))
    request = router_pb2.GenerateRequest(
        model="default", messages=[common_pb2.Message(role="user", content="dashboards")]
    )
    await collect(suite.router_stub.Generate(request, metadata=AUTH))
    with pytest.raises(grpc.aio.AioRpcError):  # no key: an error counted by reason
        await collect(suite.router_stub.Generate(request))
    # The trace-derived series appear once the trace is decided.
    # (A loaded CI machine can take several seconds to export and decide the trace.)
    calls = await eventually(
        lambda: metric(telemetry.metrics_port, "sluice_service_graph_calls"),
        lambda value: value > 0,
        within_s=20,
    )
    assert calls > 0, "the telemetry service never derived the service graph"

    exposed: set[str] = set()
    for host in (telemetry, suite.router, suite.limiter, suite.provider):
        for family in text_string_to_metric_families(await scrape(host.metrics_port)):
            exposed.update(sample.name for sample in family.samples)
    exposed.update(supervisor_series())
    recorded = {name for rules in RULES for name in re.findall(r"record: (\S+)", rules.read_text())}

    missing = [
        (board, title, name)
        for board, title, expr in panel_queries()
        for name in metric_names(expr)
        if name not in (recorded if ":" in name else exposed)
    ]
    assert missing == []
    assert len(panel_queries()) >= 25
