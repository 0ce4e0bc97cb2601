"""The benchmark report: a peer-bench result (JSON Lines: one object per run, `type` "run")
or a `make bench --json` result (loadtest/bench.py: an object with `scenarios`), as the
same Markdown and charts as the SLA report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sluice.launcher.report.model import Chart, Measure, Report


class BenchFormatError(ValueError):
    """The file is neither a peer-bench JSON Lines result nor a `make bench` JSON result."""


def bench_report(path: Path) -> Report:
    """Measures per run (throughput, latency, errors, CPU per request) and bar charts."""
    text = path.read_text(encoding="utf-8")
    runs = _peer_bench_runs(text) if path.suffix == ".jsonl" else _make_bench_runs(text)
    if not runs:
        raise BenchFormatError(f"{path}: no runs found")
    report = Report(title="Sluice benchmark report", period=f"from {path.name}")
    for run in runs:
        label = run["label"]
        report.measures += [
            Measure(f"{label}: throughput", run["rps"], "req/s"),
            Measure(f"{label}: latency p99", run["p99_ms"] / 1000.0, "s"),
            Measure(f"{label}: errors", run["errors"], "", "0", run["errors"] == 0),
        ]
        if run.get("ttft_p99_ms") is not None:
            report.measures.append(Measure(f"{label}: TTFT p99", run["ttft_p99_ms"] / 1000, "s"))
        if run.get("cpu_ms_per_request") is not None:
            report.measures.append(
                Measure(f"{label}: CPU per request", run["cpu_ms_per_request"], "ms")
            )
    labels = tuple(run["label"] for run in runs)
    report.charts.append(
        _bars("throughput", "Throughput", "requests/s", labels, [run["rps"] for run in runs])
    )
    if all(run.get("cpu_ms_per_request") is not None for run in runs):
        report.charts.append(
            _bars(
                "cpu", "CPU per request", "ms", labels, [run["cpu_ms_per_request"] for run in runs]
            )
        )
    report.charts.append(_bars("p99", "Latency p99", "ms", labels, [run["p99_ms"] for run in runs]))
    return report


def _bars(name: str, title: str, unit: str, labels: tuple[str, ...], values: list[float]) -> Chart:
    points = [(float(i), float(v)) for i, v in enumerate(values)]
    return Chart(name, title, unit, {title: points}, x_label="", bars=True, categories=labels)


def _peer_bench_runs(text: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise BenchFormatError(f"line {number} is not JSON: {error}") from None
        if row.get("type") != "run":
            continue
        try:
            cores = row.get("gw_cpu_cores")
            rps = float(row["rps"])
            runs.append(
                {
                    "label": f"{row['target']} {row['scenario']} c={row['c']}",
                    "rps": rps,
                    "p99_ms": float(row["p99_ms"]),
                    "ttft_p99_ms": row.get("ttft_p99_ms") if row.get("stream") else None,
                    "errors": int(row["errors"]),
                    # The gateway's CPU cores over the run divided by its request rate.
                    "cpu_ms_per_request": 1000.0 * float(cores) / rps if cores and rps else None,
                }
            )
        except (KeyError, TypeError, ValueError) as error:
            raise BenchFormatError(f"line {number}: missing or bad field {error}") from None
    return runs


def _make_bench_runs(text: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(text)
        return [
            {
                "label": scenario["name"],
                "rps": float(scenario["rps"]),
                "p99_ms": float(scenario["latency_ms"]["p99"]),
                "ttft_p99_ms": (scenario.get("ttft_ms") or {}).get("p99"),
                "errors": int(scenario["errors"]),
                "cpu_ms_per_request": float(scenario["suite_cpu_ms_per_request"]),
            }
            for scenario in document["scenarios"]
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise BenchFormatError(f"not a `make bench --json` result: {error}") from None
