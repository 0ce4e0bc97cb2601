"""The runtime alert rules (deploy/prometheus/rules/runtime.yml) are valid and fire as
their promtool unit tests expect. promtool comes from Debian's `prometheus` package
(`make tools`); its absence fails these tests rather than skipping them."""

from __future__ import annotations

import shutil
import subprocess  # nosec B404
from pathlib import Path

import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run `make tools` (apt-get install prometheus)"
    return subprocess.run(  # nosec B603
        [binary, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


def test_runtime_rules_are_valid() -> None:
    result = promtool("check", "rules", "rules/runtime.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout


def test_runtime_rules_fire_as_their_unit_tests_expect() -> None:
    result = promtool("test", "rules", "tests/runtime.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_loads_the_rules_and_scrapes_the_supervisor() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert "rules/runtime.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["sluice-launcher"]["static_configs"] == [{"targets": ["127.0.0.1:9105"]}]
