"""The Prometheus alert rules are valid and fire when they should (promtool).

promtool comes from Debian's `prometheus` package (`make tools` installs it; CI runs
it). Its absence fails these tests rather than skipping them: unchecked alert rules
are how an outage goes unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess  # nosec B404
from pathlib import Path

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run `make tools` (apt-get install prometheus)"
    return subprocess.run(  # nosec B603
        [binary, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "rules/resilience.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    result = promtool("test", "rules", "tests/resilience.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_broken_rule_file_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Bad\n        expr: rate(x[5m]\n"
    )
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0
