"""Alert rules and Alertmanager config, checked by Prometheus' own tools.

promtool and amtool come from Debian (`make tools`); without them these tests
fail, they do not skip.
"""

from __future__ import annotations

import shutil
import subprocess  # nosec B404 - runs the Prometheus tools on our own files
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "sluice.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "sluice.rules.test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
# The circuit-breaker alert lives in rules/resilience.rules.yml (tests/unit/test_alert_rules.py).
ALERTS = {
    "SluiceHighErrorRate",
    "SluiceTimeToFirstTokenP99OverSLA",
    "SluiceUnaryP99OverSLA",
    "SluiceAvailabilityBudgetFastBurn",
    "SluiceAvailabilityBudgetSlowBurn",
    "SluiceLimiterFallbackMode",
    "SluiceMemoryGrowth",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make tools` (Debian prometheus packages)"
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_rules_are_valid() -> None:
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = RULE_TESTS.read_text()
    untested = {alert for alert in ALERTS if f"alertname: {alert}" not in tested}
    assert untested == set()
    defined = RULES.read_text()
    assert {alert for alert in ALERTS if f"alert: {alert}\n" in defined} == ALERTS


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
    assert route("alertname=SluiceBreakerOpen", "severity=ticket") == "slack-sluice"
    assert route("alertname=Other") == "slack-sluice"


def test_a_broken_alertmanager_config_is_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(ALERTMANAGER.read_text().replace("receiver: oncall-page", "receiver: nobody"))
    result = run(tool("amtool"), "check-config", str(broken))
    assert result.returncode != 0
    assert "nobody" in result.stdout + result.stderr
