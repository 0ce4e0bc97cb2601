"""Alert rules and the Alertmanager config, checked by Prometheus' own tools.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager`
packages (`make tools` installs them; CI runs them). Their absence fails these tests
rather than skipping them: unchecked alert rules are how an outage goes unnoticed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from google.protobuf import descriptor_pb2

from sluice.launcher import sli
from tests.prometheus_tools import run, tool

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "sluice.rules.yml"
RULE_TESTS = PROMETHEUS / "tests" / "sluice.rules.test.yml"
SLA_RULES = PROMETHEUS / "rules" / "sla.rules.yml"
SLA_TESTS = PROMETHEUS / "tests" / "sla.rules.test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
BUDGET_ALERT = "SluiceErrorBudgetBurn"
# The SRE workbook's multi-window, multi-burn-rate tiers for a 30-day 99.9% objective:
# (severity, long window, short window) -> burn rate.
BUDGET_TIERS = {
    ("page", "1h", "5m"): 14.4,
    ("page", "6h", "30m"): 6.0,
    ("ticket", "3d", "6h"): 1.0,
}
# The SLO and capacity alerts of sluice.rules.yml, each with its promtool unit tests.
ALERTS = {
    "SluiceHighErrorRate",
    "SluiceTimeToFirstTokenP99OverSLA",
    "SluiceUnaryP99OverSLA",
    "SluiceLimiterFallbackMode",
    "SluiceMemoryGrowth",
}
# (rule file, its promtool unit tests, how many rules it holds)
RULE_FILES = [
    ("rules/sluice.rules.yml", "tests/sluice.rules.test.yml", 5),
    ("rules/resilience.rules.yml", "tests/resilience.rules.test.yml", 4),
    ("rules/sla.rules.yml", "tests/sla.rules.test.yml", 13),
    ("rules/runtime.yml", "tests/runtime.test.yml", 3),
]


@pytest.mark.parametrize(("rules", "unit_tests", "count"), RULE_FILES)
def test_rules_are_valid_and_fire_as_their_unit_tests_expect(
    rules: str, unit_tests: str, count: int
) -> None:
    checked = run(tool("promtool"), "check", "rules", rules, cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {count} rules found" in checked.stdout
    tested = run(tool("promtool"), "test", "rules", unit_tests, cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_slo_alert_is_defined_and_has_unit_tests() -> None:
    tested = RULE_TESTS.read_text()
    assert {alert for alert in ALERTS if f"alertname: {alert}" not in tested} == set()
    defined = RULES.read_text()
    assert {alert for alert in ALERTS if f"alert: {alert}\n" in defined} == ALERTS


def all_rules() -> list[dict[str, object]]:
    return [
        rule
        for path in sorted((PROMETHEUS / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def streaming_methods() -> set[str]:
    """Every streaming RPC of our contracts, as `sluice_rpc_*` label it (gen/sluice.binpb)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(
        (ROOT / "gen" / "sluice.binpb").read_bytes()
    )
    return {
        f"/{proto.package}.{service.name}/{method.name}"
        for proto in files.file
        if proto.package.startswith("sluice.")
        for service in proto.service
        for method in service.method
        if method.client_streaming or method.server_streaming
    }


def test_the_unary_latency_alert_leaves_out_every_streaming_method() -> None:
    (rule,) = [r for r in all_rules() if r.get("alert") == "SluiceUnaryP99OverSLA"]
    excluded = re.findall(r'method!~"([^"]+)"', str(rule["expr"]))
    streams = streaming_methods()
    assert {"/sluice.provider.v1.ProviderService/Multiplex"} <= streams  # the set is real
    for method in sorted(streams):
        assert any(re.fullmatch(pattern, method) for pattern in excluded), method
    assert not any(re.fullmatch(p, "/sluice.limiter.v1.LimiterService/Acquire") for p in excluded)


def test_the_error_budget_is_alerted_once_in_the_workbooks_tiers() -> None:
    # Every alert on the SLI's ratios is the one budget alert: no second name for the
    # same burn.
    budget = [
        rule
        for rule in all_rules()
        if "alert" in rule and "sluice:rpc_server_errors:" in str(rule["expr"])
    ]
    assert {rule["alert"] for rule in budget} == {BUDGET_ALERT}
    tiers = {}
    for rule in budget:
        labels = rule["labels"]
        assert isinstance(labels, dict)
        tier = (labels["severity"], labels["long_window"], labels["short_window"])
        thresholds = set()
        for window in tier[1:]:
            found = re.search(
                rf"sluice:rpc_server_errors:ratio_rate{window} > \(?(?:([\d.]+) \* )?0\.001\)?",
                str(rule["expr"]),
            )
            assert found, (tier, window, rule["expr"])
            thresholds.add(float(found[1] or 1))
        assert len(thresholds) == 1, tier  # both windows at the tier's burn rate
        tiers[tier] = thresholds.pop()
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["runbook_url"] == "docs/runbooks.md#error-budget-burn"
    assert tiers == BUDGET_TIERS


def test_the_budget_tests_fail_when_health_checks_are_counted(tmp_path: Path) -> None:
    # The SLA rules with the old SLI (every router RPC, health checks included): the
    # promtool cases must notice, or they prove nothing about the selector.
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    shutil.copy(RULES, tmp_path / "rules" / "sluice.rules.yml")
    text = SLA_RULES.read_text()
    assert sli.ROUTER_RPCS in text
    (tmp_path / "rules" / "sla.rules.yml").write_text(
        text.replace(sli.ROUTER_RPCS, 'service="router"')
    )
    shutil.copy(SLA_TESTS, tmp_path / "tests" / "sla.rules.test.yml")

    result = run(tool("promtool"), "test", "rules", "tests/sla.rules.test.yml", cwd=tmp_path)

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert BUDGET_ALERT in output
    # Failing health checks alone (the case with no client traffic) would page.
    assert "router: 100% of requests fail" in output


def test_a_broken_rule_file_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Bad\n        expr: rate(x[5m]\n"
    )
    result = run(tool("promtool"), "check", "rules", str(broken))
    assert result.returncode != 0


def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    # The same rules, one expectation flipped: the run must fail, or the tests prove nothing.
    wrong = RULE_TESTS.read_text().replace(
        "      - eval_time: 4m\n        alertname: SluiceHighErrorRate\n        exp_alerts: []",
        "      - eval_time: 4m\n        alertname: SluiceHighErrorRate\n        exp_alerts:\n"
        "          - exp_labels: {severity: page, service: limiter}",
    )
    assert wrong != RULE_TESTS.read_text()
    (tmp_path / "rules").mkdir()
    shutil.copy(RULES, tmp_path / "rules" / "sluice.rules.yml")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "wrong.test.yml").write_text(wrong)

    result = run(tool("promtool"), "test", "rules", str(tmp_path / "tests" / "wrong.test.yml"))

    assert result.returncode != 0
    assert "SluiceHighErrorRate" in result.stdout + result.stderr


def test_alertmanager_config_is_valid_and_routes_pages_to_slack_and_email() -> None:
    amtool = tool("amtool")
    result = run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    config = ALERTMANAGER.read_text()
    assert "slack_configs" in config and "email_configs" in config

    def route(*labels: str) -> str:
        routed = run(
            amtool, "config", "routes", "test", "--config.file", str(ALERTMANAGER), *labels
        )
        assert routed.returncode == 0, routed.stdout + routed.stderr
        return routed.stdout.strip()

    assert route("alertname=SluiceHighErrorRate", "severity=page") == "oncall-page"
    # The budget alert's tiers: pages to the on-call, the ticket to Slack.
    for severity, long, short in BUDGET_TIERS:
        receiver = "oncall-page" if severity == "page" else "slack-sluice"
        labels = (f"severity={severity}", f"long_window={long}", f"short_window={short}")
        assert route(f"alertname={BUDGET_ALERT}", *labels) == receiver
    assert route("alertname=SluiceBreakerOpen", "severity=ticket") == "slack-sluice"
    assert route("alertname=Other") == "slack-sluice"


def test_a_broken_alertmanager_config_is_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(ALERTMANAGER.read_text().replace("receiver: oncall-page", "receiver: nobody"))
    result = run(tool("amtool"), "check-config", str(broken))
    assert result.returncode != 0
    assert "nobody" in result.stdout + result.stderr
