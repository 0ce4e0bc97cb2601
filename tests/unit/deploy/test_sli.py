"""One SLI everywhere: every RPC selector of the Prometheus rules, the Grafana dashboards,
the rendered deploy/k8s (PrometheusRules, dashboards, AnalysisTemplates) and the SLA table
of docs/operations.md is launcher/sli.py's (client RPCs only, the same server-error
codes), and the Python users (the SLA report, the canary gates) import it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sluice.launcher import sli
from sluice.launcher.k8s import rollout as k8s_rollout
from sluice.launcher.report import sla as report
from sluice.launcher.rollout import gates

ROOT = Path(__file__).resolve().parents[3]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
RENDERED = sorted((ROOT / "deploy" / "k8s").glob("*/*.yaml"))
SELECTOR = re.compile(r"\b(sluice_rpc_(?:requests_total|duration_seconds\w*))(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
# Methods no client calls, whatever the version of the health and reflection services.
INFRASTRUCTURE = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


def problems(expr: str) -> list[str]:
    """What is wrong with the RPC selectors of one PromQL expression."""
    found = []
    for match in SELECTOR.finditer(expr):
        selector = match[0]
        matchers = MATCHER.findall(match[2] or "")
        methods = [(op, value) for name, op, value in matchers if name == "method"]
        # A positive method matcher that no health check or reflection call can match
        # (`method="/sluice.../Generate"`, `method=~".*/Stream"`) selects client RPCs.
        specific = any(
            op in ("=", "=~") and not any(re.fullmatch(value, m) for m in INFRASTRUCTURE)
            for op, value in methods
        )
        if not specific and sli.CLIENT_RPCS not in selector:
            found.append(f"{selector}: counts health checks (no {sli.CLIENT_RPCS})")
        router = ("service", "=", "router") in matchers
        if router and not specific and sli.ROUTER_RPCS not in selector:
            found.append(f"{selector}: not the SLI's {sli.ROUTER_RPCS}")
        for name, op, value in matchers:
            if name == "code" and op == "=~" and value != sli.SERVER_ERRORS:
                found.append(f"{selector}: server errors {value!r}, not {sli.SERVER_ERRORS!r}")
    return found


def rule_exprs() -> Iterator[tuple[str, str]]:
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    def panels(node: dict[str, object]) -> Iterator[dict[str, object]]:
        for panel in node.get("panels", []):  # type: ignore[attr-defined]
            yield panel
            yield from panels(panel)

    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                if "expr" in target:
                    yield f"{path.name}: {panel['title']}", target["expr"]


def sla_section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    return text.split("\n## SLA\n", 1)[1].split("\n### ", 1)[0]


def test_the_checker_catches_health_checks_and_other_codes() -> None:
    # The checks below would pass vacuously if these passed.
    assert problems('rate(sluice_rpc_requests_total{service="router"}[5m])')
    assert problems("sum(rate(sluice_rpc_requests_total[5m]))")
    assert problems('sluice_rpc_duration_seconds_bucket{method=~".*/Check"}')
    assert problems(f'sluice_rpc_requests_total{{{sli.CLIENT_RPCS},service="router"}}')
    assert problems(f'sluice_rpc_requests_total{{{sli.ROUTER_RPCS},code=~"INTERNAL"}}')
    assert not problems(
        f'sluice_rpc_requests_total{{{sli.ROUTER_RPCS},code=~"{sli.SERVER_ERRORS}"}}'
    )
    assert not problems(
        'sluice_rpc_requests_total{method="/sluice.router.v1.RouterService/Generate"}'
    )


@pytest.mark.parametrize(
    "source", ["rules", "dashboards", "rendered k8s"], ids=["rules", "dashboards", "k8s"]
)
def test_every_rpc_selector_is_the_slis(source: str) -> None:
    if source == "rules":
        exprs = list(rule_exprs())
    elif source == "dashboards":
        exprs = list(dashboard_exprs())
    else:
        # Dashboards are embedded as JSON text: unescape their quotes first.
        exprs = [(p.name, p.read_text().replace('\\"', '"')) for p in RENDERED]
    assert sum(len(SELECTOR.findall(expr)) for _, expr in exprs) > 5
    assert [(where, p) for where, expr in exprs for p in problems(expr)] == []


def test_the_sli_recording_rules_are_client_rpcs_with_the_slis_codes() -> None:
    recorded = {
        name.split(": ", 1)[1]: expr
        for name, expr in rule_exprs()
        if ": sluice:rpc_server_errors:" in name
    }
    windows = {name.rsplit("ratio_rate", 1)[1] for name in recorded}
    assert windows == {"5m", "30m", "1h", "6h", "3d"}
    for name, expr in recorded.items():
        window = name.rsplit("ratio_rate", 1)[1]
        errors = (
            f'sluice_rpc_requests_total{{{sli.ROUTER_RPCS},code=~"{sli.SERVER_ERRORS}"}}[{window}]'
        )
        requests = f"sluice_rpc_requests_total{{{sli.ROUTER_RPCS}}}[{window}]"
        assert errors in expr and requests in expr, name


def test_the_operations_pages_sla_table_uses_the_sli() -> None:
    section = sla_section()
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert table.count(sli.ROUTER_RPCS) >= 5
    assert problems(table) == []
    # Its Python example takes the definition from the module, not a copy.
    assert "sli.is_client_method(" in section and "sli.SERVER_ERROR_CODES" in section


def test_the_python_users_take_the_sli_from_one_place() -> None:
    expected = f"sluice_rpc_requests_total{{{sli.ROUTER_RPCS}}}"
    assert expected == report.REQUESTS
    assert sli.ROUTER_RPCS in report.ERRORS and sli.SERVER_ERRORS in report.ERRORS
    assert sli.ROUTER_UNARY_RPCS in report.UNARY_BUCKETS
    assert gates.SERVER_ERROR_CODES == sli.SERVER_ERROR_CODES
    for gate in ("error_rate", "success_rate", "latency_p99"):
        query = gates.promql(gate, "green", "1m")
        assert problems(query) == [] and sli.ROUTER_RPCS in query, gate
    assert problems(k8s_rollout.error_ratio_query("provider")) == []


def test_client_methods_by_name() -> None:
    assert sli.is_client_method("/sluice.router.v1.RouterService/Complete")
    assert not any(sli.is_client_method(method) for method in INFRASTRUCTURE)
    # The PromQL matcher and the Python check agree on every one of them.
    methods = [*INFRASTRUCTURE, "/sluice.router.v1.RouterService/Generate", "/grpcx/Odd"]
    for method in methods:
        client = re.fullmatch(sli.INFRASTRUCTURE_METHODS, method) is None
        assert client == sli.is_client_method(method), method
