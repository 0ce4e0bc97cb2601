"""`sluice report sla|bench`: the commands' arguments and what they run."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluice.launcher.report.model import Report

# Each handler imports what it runs: the parser is built by every `sluice` command
# (launcher/cli.py), and the Prometheus client alone loads urllib.request and http.client.


def add_commands(commands: Any) -> None:
    """Add `report sla` and `report bench` to the CLI's subcommands."""
    report = commands.add_parser("report", help="SLA and benchmark reports (Markdown + PNG)")
    kinds = report.add_subparsers(dest="report_command", required=True)
    sla = kinds.add_parser(
        "sla",
        help="availability, latency, error rate, CPU and memory against the SLA",
        description="Reads a Prometheus that scrapes the suite (deploy/prometheus/) and "
        "writes report.md plus charts. Exits 1 when a target is not met, 2 when "
        "Prometheus cannot answer.",
    )
    sla.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus URL")
    sla.add_argument("--since", default="1h", help="window up to now: 90s, 15m, 6h, 7d")
    sla.add_argument("--end", type=float, help="end of the window, unix seconds (default now)")
    sla.add_argument(
        "--rate-window", default="1m", help="range of rate() in the charts (default 1m)"
    )
    sla.add_argument("--cpu-limit", type=float, help="cores, where no cgroup limit is exported")
    sla.add_argument("--memory-limit-mb", type=float, help="MB, where no cgroup limit is exported")
    sla.add_argument("--output", default="build/report/sla", help="directory to write")
    sla.set_defaults(run=_sla)
    bench = kinds.add_parser(
        "bench",
        help="a peer-bench (.jsonl) or `make bench --json` result as a report",
    )
    bench.add_argument("result", help="the result file")
    bench.add_argument("--output", default="build/report/bench", help="directory to write")
    bench.set_defaults(run=_bench)


def _finish(report: Report, output: str) -> int:
    from sluice.launcher.report.render import ChartsUnavailableError, write  # noqa: PLC0415

    try:
        path = write(report, Path(output))
    except (OSError, ChartsUnavailableError) as err:
        print(f"sluice report: {err}", file=sys.stderr)
        return 2
    print(path.read_text(encoding="utf-8"))
    print(f"wrote {path}", file=sys.stderr)
    return 0 if report.passed else 1


def _sla(args: argparse.Namespace) -> int:
    from sluice.launcher.report.prometheus import Prometheus, PrometheusError  # noqa: PLC0415
    from sluice.launcher.report.sla import Window, parse_duration, sla_report  # noqa: PLC0415

    try:
        window = Window(parse_duration(args.since), args.end or time.time(), args.rate_window)
    except ValueError as err:
        print(f"sluice report sla: {err}", file=sys.stderr)
        return 2
    prometheus = Prometheus(args.prometheus)
    try:
        memory = args.memory_limit_mb * 1e6 if args.memory_limit_mb else None
        report = sla_report(
            prometheus, window, cpu_limit_cores=args.cpu_limit, memory_limit_bytes=memory
        )
    except PrometheusError as err:
        print(f"sluice report sla: {args.prometheus}: {err}", file=sys.stderr)
        return 2
    finally:
        prometheus.close()
    return _finish(report, args.output)


def _bench(args: argparse.Namespace) -> int:
    from sluice.launcher.report.bench import BenchFormatError, bench_report  # noqa: PLC0415

    try:
        report = bench_report(Path(args.result))
    except (OSError, BenchFormatError) as err:
        print(f"sluice report bench: {err}", file=sys.stderr)
        return 2
    return _finish(report, args.output)
