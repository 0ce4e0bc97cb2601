"""Prometheus loads the runtime alert rules (deploy/prometheus/rules/runtime.yml) and
scrapes the supervisor; tests/unit/deploy/test_alerts.py checks and runs the rules'
promtool unit tests with every other rule file."""

from __future__ import annotations

from pathlib import Path

import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def test_prometheus_loads_the_rules_and_scrapes_the_supervisor() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert "rules/runtime.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["sluice-launcher"]["static_configs"] == [{"targets": ["127.0.0.1:9105"]}]
