"""`sluice report`: benchmark results read into measures, durations, the SLI shared with
the alert rules, and the Markdown + PNG output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sluice.launcher.cli import main
from sluice.launcher.report.bench import BenchFormatError, bench_report
from sluice.launcher.report.model import Measure, Report
from sluice.launcher.report.render import write
from sluice.launcher.report.sla import ERRORS, REQUESTS, SERVER_ERROR_CODES, parse_duration

ROOT = Path(__file__).resolve().parents[3]
PNG = b"\x89PNG\r\n\x1a\n"


def _peer_bench(path: Path) -> Path:
    rows = [
        {"type": "meta", "nproc": 2},
        {"type": "run", "target": "litellm", "scenario": "st0", "c": 50, "stream": True,
         "rps": 40.0, "p99_ms": 1700.0, "ttft_p99_ms": 1100.0, "errors": 0,
         "gw_cpu_cores": 1.0},
        {"type": "run", "target": "sluice", "scenario": "st0", "c": 50, "stream": True,
         "rps": 500.0, "p99_ms": 90.0, "ttft_p99_ms": 70.0, "errors": 2,
         "gw_cpu_cores": 0.5},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_peer_bench_runs_become_measures_with_cpu_per_request(tmp_path: Path) -> None:
    report = bench_report(_peer_bench(tmp_path / "bench.jsonl"))
    values = {m.name: m for m in report.measures}
    assert values["sluice st0 c=50: CPU per request"].value == pytest.approx(1.0)  # 0.5/500 s
    assert values["litellm st0 c=50: CPU per request"].value == pytest.approx(25.0)
    assert values["sluice st0 c=50: latency p99"].value == pytest.approx(0.09)
    assert values["litellm st0 c=50: TTFT p99"].value == pytest.approx(1.1)
    assert values["sluice st0 c=50: errors"].ok is False
    assert not report.passed
    assert [c.name for c in report.charts] == ["throughput", "cpu", "p99"]


def test_make_bench_json_becomes_measures(tmp_path: Path) -> None:
    result = {
        "scenarios": [
            {"name": "st0-envoy-c50", "rps": 420.0, "latency_ms": {"p50": 5, "p95": 9, "p99": 12},
             "ttft_ms": {"p50": 2, "p95": 3, "p99": 4}, "errors": 0,
             "suite_cpu_ms_per_request": 1.25},
        ]
    }  # fmt: skip
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    report = bench_report(path)
    values = {m.name: m.value for m in report.measures}
    assert values["st0-envoy-c50: CPU per request"] == pytest.approx(1.25)
    assert values["st0-envoy-c50: latency p99"] == pytest.approx(0.012)
    assert report.passed


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bench.jsonl", "not json\n"),
        ("bench.jsonl", json.dumps({"type": "run", "target": "x"}) + "\n"),
        ("bench.jsonl", json.dumps({"type": "meta"}) + "\n"),
        ("bench.json", "{}"),
        ("bench.json", "[1, 2]"),
    ],
)
def test_bad_bench_files_are_refused_with_a_reason(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BenchFormatError):
        bench_report(path)


def test_cli_bench_writes_markdown_and_png_charts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["report", "bench", str(_peer_bench(tmp_path / "b.jsonl")), "--output", str(out)])
    assert code == 1  # one run had errors
    markdown = (out / "report.md").read_text()
    assert "| sluice st0 c=50: errors | 2 | 0 | **FAIL** |" in markdown
    for chart in ("throughput", "cpu", "p99"):
        assert (out / f"{chart}.png").read_bytes()[:8] == PNG
        assert f"]({chart}.png)" in markdown
    assert markdown in capsys.readouterr().out


def test_cli_refuses_a_missing_file_and_a_bad_duration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "bench", str(tmp_path / "none.jsonl")]) == 2
    assert main(["report", "sla", "--since", "soon", "--output", str(tmp_path)]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_cli_says_when_prometheus_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", "sla", "--prometheus", "http://127.0.0.1:9", "--output", str(tmp_path)])
    assert code == 2
    assert "Prometheus unreachable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("6h", 21600), ("7d", 604800), ("42", 42)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "-5m", "0", "five minutes", "1w"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_sli_is_the_alert_rules_one() -> None:
    """The report and the SLA alerts count the same RPCs (the router's client RPCs, health
    checks left out) and the same gRPC codes as server errors."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules/sla.rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r]
    assert exprs and all(f'code=~"{SERVER_ERROR_CODES}"' in e for e in exprs)
    assert all(REQUESTS in e and ERRORS in e for e in exprs)
    assert "/grpc" in REQUESTS and "/grpc" in ERRORS


def test_unjudged_measures_and_empty_charts(tmp_path: Path) -> None:
    report = Report("t", "p", [Measure("x", None, "s"), Measure("y", 1.5, "cores")])
    assert report.passed
    path = write(report, tmp_path)
    text = path.read_text()
    assert "| x | no data |  |  |" in text and "| y | 1.500 cores |  |  |" in text
    assert not list(tmp_path.glob("*.png"))
