"""Each SLA alert (deploy/prometheus/rules/sla.rules.yml) is unit-tested with `promtool
test rules` and links its runbook (tests/unit/deploy/test_alerts.py checks the file and
runs its unit tests with every other rule file, and the error budget's burn-rate tiers).

promtool comes from Debian's `prometheus` package (`make tools`); its absence fails
these tests rather than skipping them.
"""

from __future__ import annotations

import re
import subprocess  # nosec B404
from pathlib import Path

import yaml

from tests.prometheus_tools import run, tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "rules" / "sla.rules.yml"
TESTS = DEPLOY / "tests" / "sla.rules.test.yml"
ANCHOR = re.compile(r"^docs/runbooks\.md#[a-z0-9]+(-[a-z0-9]+)*$")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return run(tool("promtool"), *args, cwd=DEPLOY)


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_sla_alert_is_tested_and_links_its_runbook() -> None:
    tested = {
        check["alertname"]
        for case in yaml.safe_load(TESTS.read_text())["tests"]
        for check in case["alert_rule_test"]
        if check["exp_alerts"]
    }
    names = set()
    for rule in alerts():
        names.add(rule["alert"])
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert ANCHOR.match(annotations["runbook_url"]), rule["alert"]
        labels = rule["labels"]
        assert isinstance(labels, dict)
        assert labels["severity"] in ("page", "ticket"), rule["alert"]
        # Beside the severity only the burn-rate tier of the error-budget alert.
        assert set(labels) - {"severity"} <= {"long_window", "short_window"}, rule["alert"]
    assert names == {
        "SluiceTargetDown",
        "SluiceCpuNearLimit",
        "SluiceMemoryNearLimit",
        "SluiceLatencyP99OverSLA",
        "SluiceErrorBudgetBurn",
        "SluiceRolloutFailed",
    }
    assert names <= tested  # each seen firing in a promtool test, not only silent
    # Each tier of the budget alert too (test_alerts.py checks the tiers themselves).
    fired = {
        (expected["exp_labels"]["severity"], expected["exp_labels"]["long_window"])
        for case in yaml.safe_load(TESTS.read_text())["tests"]
        for check in case["alert_rule_test"]
        if check["alertname"] == "SluiceErrorBudgetBurn"
        for expected in check["exp_alerts"]
    }
    assert fired == {("page", "1h"), ("page", "6h"), ("ticket", "3d")}


def test_prometheus_loads_the_sla_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert "rules/sla.rules.yml" in config["rule_files"]


def test_a_wrong_expectation_fails_promtool(tmp_path: Path) -> None:
    # The unit test above could pass vacuously if promtool ignored expectations.
    broken = yaml.safe_load(TESTS.read_text())
    broken["rule_files"] = [str(DEPLOY / "rules" / "sluice.rules.yml"), str(RULES)]
    broken["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []
    path = tmp_path / "broken.test.yml"
    path.write_text(yaml.safe_dump(broken))
    result = promtool("test", "rules", str(path))
    assert result.returncode != 0
    assert "SluiceTargetDown" in result.stdout + result.stderr
