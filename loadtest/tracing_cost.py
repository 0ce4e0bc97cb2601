"""Tracing cost in one run: the same load with tracing at the suite's default sampling
and with tracing off, alternated (off, on, off, on … ) so machine drift hits both alike.

    python loadtest/tracing_cost.py [--scenario st0-envoy-c50] [--rounds 2] [--duration 6]
                                    [--ratio R]   # head ratio for "on" (default: the suite's)

Prints throughput, p99 latency and suite CPU per request for each arm (medians over the
rounds) and the cost of tracing: throughput lost and CPU per request added.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # type: ignore[import-not-found]


def run_arm(scenario: str, duration: float, ratio: float | None, into: Path) -> dict[str, Any]:
    """One bench run of one scenario; returns its figures."""
    argv = ["--only", scenario, "--duration", str(duration), "--json", str(into)]
    if ratio is not None:
        argv += ["--tracing-ratio", str(ratio)]
    code = bench.main(argv)
    if code != 0:
        raise SystemExit(f"bench exited {code}")
    data = json.loads(into.read_text())
    results = data["scenarios"]
    figures: dict[str, Any] = results[0]
    return figures


def main(argv: list[str] | None = None) -> int:
    """Alternate off/on runs, then print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="st0-envoy-c50")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--ratio", type=float, help="head ratio with tracing on")
    args = parser.parse_args(argv)
    arms: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="sluice-tracing-cost-") as tmp:
        for index in range(args.rounds):
            for arm, ratio in (("off", 0.0), ("on", args.ratio)):
                out = Path(tmp) / f"{arm}-{index}.json"
                arms[arm].append(run_arm(args.scenario, args.duration, ratio, out))

    def median(arm: str, key: str, sub: str | None = None) -> float:
        values = [r[key][sub] if sub else r[key] for r in arms[arm]]
        return float(statistics.median(values))

    print(f"\ntracing cost, {args.scenario}, {args.rounds} rounds of {args.duration:g} s each")
    print(f"{'arm':<5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11} {'cores':>6}")
    for arm in ("off", "on"):
        print(
            f"{arm:<5} {median(arm, 'rps'):>8.0f} {median(arm, 'latency_ms', 'p50'):>8.1f} "
            f"{median(arm, 'latency_ms', 'p99'):>8.1f} "
            f"{median(arm, 'suite_cpu_ms_per_request'):>11.3f} {median(arm, 'suite_cores'):>6.2f}"
        )
    rps_off, rps_on = median("off", "rps"), median("on", "rps")
    cpu_off, cpu_on = (median(a, "suite_cpu_ms_per_request") for a in ("off", "on"))
    print(
        f"throughput cost {100 * (1 - rps_on / rps_off):.1f}% "
        f"(target < 10%); CPU per request +{100 * (cpu_on / cpu_off - 1):.1f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
