"""Chaos run: the real suite under bounded load while things break.

What it shows and the figures it gave: docs/resilience.md, "The chaos run".

Starts `sluice up` (two provider replicas, primary + secondary back ends, fault
injection on) on free loopback ports, keeps `--concurrency` Generate streams in flight
for the whole run, and injects, one after another:

1. kill -9 of one provider replica (the supervisor restarts it);
2. SIGSTOP of the limiter for `--freeze` seconds, then SIGCONT;
3. the primary back end returning 500s for `--outage` seconds;
4. a 429 storm with retry-after on the primary for `--storm` seconds.

Faults 3 and 4 travel per request in the x-sluice-fault header (honoured because the
run enables fault injection). Then it prints: requests, the share completed with a
`complete` event, the share served by each fallback step, p99 latency and time to
first token during and after each fault, breaker transitions, the time to return to
the primary after the outage, and any stream that hung.

    python loadtest/chaos.py                      # 50 streams, ~60 s
    python loadtest/chaos.py -c 10 --scale 0.25   # the shortened run the tests use
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess  # nosec B404 - we start our own `sluice up`
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.tls import channel as suite_channel
from loadtest.tls import find_certs
from sluice.common.v1 import common_pb2
from sluice.router.v1 import router_pb2, router_pb2_grpc

DEV_KEY = "sk-sluice-dev"
STEPS = {
    common_pb2.FALLBACK_STEP_PRIMARY: "primary",
    common_pb2.FALLBACK_STEP_SECONDARY: "secondary",
    common_pb2.FALLBACK_STEP_CACHE: "cache",
    common_pb2.FALLBACK_STEP_SIMPLIFIED: "simplified",
}
PORTS = (
    "router", "router_metrics", "limiter", "limiter_metrics", "provider", "provider_metrics",
    "provider2", "provider2_metrics", "telemetry", "telemetry_metrics", "envoy", "envoy_admin",
    "router_http",
)  # fmt: skip


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def chaos_config(ports: dict[str, int], reset_timeout_ms: int) -> dict[str, Any]:
    """The suite's configuration for the run."""
    backend = {"time_to_first_token_ms": 20, "tokens_per_second": 200, "answer_tokens": 40}
    return {
        "tracing": {"enabled": False},
        "router": {
            "server": {"port": ports["router"], "metrics_port": ports["router_metrics"]},
            "dev_mode": True,  # the load uses the public development key
            # Its own port: the default (8090) may be taken by another suite on the machine.
            "http_api": {"port": ports["router_http"]},
            "limiter_address": f"127.0.0.1:{ports['limiter']}",
            "provider_address": f"127.0.0.1:{ports['provider']}",
            "models": {
                "default": {
                    "backends": [{"backend": "primary"}, {"backend": "secondary"}],
                    "simplified_text": "The service is degraded; please retry shortly.",
                }
            },
            "resilience": {
                "breaker": {"reset_timeout": reset_timeout_ms},
                "local_limit_rps": 5000,
            },
        },
        "limiter": {
            "server": {"port": ports["limiter"], "metrics_port": ports["limiter_metrics"]},
            "per_key": {"capacity": 100_000, "refill_per_second": 100_000},
        },
        "provider": {
            "server": {"port": ports["provider"], "metrics_port": ports["provider_metrics"]},
            "replicas": 2,
            "replica_ports": [
                {"port": ports["provider2"], "metrics_port": ports["provider2_metrics"]}
            ],
            "fault_injection": True,
            "backends": {"primary": backend, "secondary": backend},
        },
        "telemetry": {
            "server": {"port": ports["telemetry"], "metrics_port": ports["telemetry_metrics"]}
        },
        "envoy": {"enabled": False, "port": ports["envoy"], "admin_port": ports["envoy_admin"]},
        "supervisor": {"metrics_port": 0},  # a free port: never another suite's
    }


@dataclass(slots=True)
class Record:
    """One Generate stream."""

    started: float
    ended: float = 0.0
    ttft: float | None = None
    completed: bool = False
    step: str = ""
    code: str = ""
    hung: bool = False


@dataclass
class Phase:
    """A fault window."""

    name: str
    start: float
    end: float


@dataclass
class Run:
    """Shared state of the run."""

    fault_header: str = ""
    records: list[Record] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    transitions: list[tuple[float, str, str]] = field(default_factory=list)
    stop: bool = False


async def one_stream(
    stub: router_pb2_grpc.RouterServiceStub, run: Run, index: int, deadline_s: float
) -> None:
    record = Record(started=time.monotonic())
    run.records.append(record)
    metadata: list[tuple[str, str]] = [("authorization", f"Bearer {DEV_KEY}")]
    if run.fault_header:
        metadata.append(("x-sluice-fault", run.fault_header))
    request = router_pb2.GenerateRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content=f"chaos request {index}")],
        max_tokens=40,
    )
    call = stub.Generate(request, metadata=metadata, timeout=deadline_s)
    try:
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "data" and record.ttft is None:
                record.ttft = time.monotonic() - record.started
            elif kind == "complete":
                record.completed = True
                record.step = STEPS.get(event.complete.fallback_step, "?")
            elif kind == "error":
                record.code = event.error.reason
    except grpc.aio.AioRpcError as err:
        record.code = record.code or err.code().name
        record.hung = err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        record.ended = time.monotonic()
        call.cancel()


async def worker(
    stub: router_pb2_grpc.RouterServiceStub, run: Run, first: int, stride: int, deadline_s: float
) -> None:
    index = first
    while not run.stop:
        await one_stream(stub, run, index, deadline_s)
        index += stride


async def watch_breakers(metrics_url: str, run: Run) -> None:
    """Sample the router's breaker gauge; record every state change."""
    names = {0.0: "closed", 1.0: "half_open", 2.0: "open"}
    last: dict[str, str] = {}
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        while not run.stop:
            with contextlib.suppress(httpx.HTTPError):
                text = (await client.get(metrics_url)).text
                for line in text.splitlines():
                    if line.startswith("sluice_router_breaker_state{"):
                        backend = line.split('backend="', 1)[1].split('"', 1)[0]
                        state = names.get(float(line.rsplit(" ", 1)[1]), "?")
                        if last.get(backend, "closed") != state:
                            run.transitions.append((time.monotonic(), backend, state))
                        last[backend] = state
            await asyncio.sleep(0.1)


async def router_counters(metrics_url: str) -> dict[str, float]:
    """Breaker transitions, retries, failovers and degradations, as the router counted them."""
    wanted = (
        "sluice_router_breaker_transitions_total",
        "sluice_router_retries_total",
        "sluice_router_retry_budget_exhausted_total",
        "sluice_router_midstream_failovers_total",
        "sluice_router_bulkhead_rejected_total",
        "sluice_router_limiter_degraded_total",
        "sluice_router_fallback_served_total",
    )
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        text = (await client.get(metrics_url)).text
    counters: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            series, value = line.rsplit(" ", 1)
            counters[series] = float(value)
    return counters


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * 1000, 1)


def window_figures(records: list[Record], start: float, end: float) -> dict[str, Any]:
    """Figures of the streams that started within [start, end)."""
    inside = [r for r in records if start <= r.started < end]
    return {
        "requests": len(inside),
        "completed_share": round(sum(r.completed for r in inside) / len(inside), 5)
        if inside
        else None,
        "p99_latency_ms": pct([r.ended - r.started for r in inside], 99),
        "p99_ttft_ms": pct([r.ttft for r in inside if r.ttft is not None], 99),
    }


def summarise(run: Run, origin: float, after_s: float) -> dict[str, Any]:
    """Every figure the issue asks for."""
    records = run.records
    total = len(records)
    steps: dict[str, int] = {}
    for record in records:
        if record.completed:
            steps[record.step] = steps.get(record.step, 0) + 1
    phases = {}
    for phase in run.phases:
        phases[phase.name] = {
            "during": window_figures(records, phase.start, phase.end),
            "after": window_figures(records, phase.end, phase.end + after_s),
        }
    outage = next((p for p in run.phases if p.name == "primary_500s"), None)
    back_to_primary = None
    if outage is not None:
        served = sorted(
            r.started for r in records if r.started >= outage.end and r.step == "primary"
        )
        back_to_primary = round(served[0] - outage.end, 2) if served else None
    failures: dict[str, int] = {}
    for record in records:
        if not record.completed:
            failures[record.code or "NO_COMPLETE"] = (
                failures.get(record.code or "NO_COMPLETE", 0) + 1
            )
    return {
        "requests": total,
        "completed_share": round(sum(r.completed for r in records) / total, 5) if total else None,
        "served_by_step": {k: round(v / total, 5) for k, v in sorted(steps.items())},
        "failures": failures,
        "hung_streams": sum(r.hung for r in records),
        "overall": window_figures(records, float("-inf"), float("inf")),
        "phases": phases,
        "breaker_transitions": [
            {"t_s": round(t - origin, 2), "backend": b, "state": s} for t, b, s in run.transitions
        ],
        "seconds_back_to_primary_after_outage": back_to_primary,
    }


def read_pid(run_dir: Path, part: str) -> int:
    return int((run_dir / f"{part}.pid").read_text())


@dataclass
class Suite:
    """The `sluice up` process of the run."""

    process: subprocess.Popen[str]
    ports: dict[str, int]
    run_dir: Path


@contextlib.contextmanager
def running_suite(args: argparse.Namespace, workdir: Path) -> Iterator[Suite]:
    """Start `sluice up` for the run (no Envoy: the load goes to the router) and stop it."""
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    config = workdir / "chaos.yaml"
    config.write_text(yaml.safe_dump(chaos_config(ports, int(args.reset_timeout_s * 1000))))
    run_dir = workdir / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    sluice = str(Path(sys.executable).parent / "sluice")
    process = subprocess.Popen(  # noqa: S603  # nosec B603
        [sluice, "up", "--config", str(config), "--run-dir", str(run_dir),
         "--log-dir", str(workdir / "logs"), "--no-envoy"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        if process.stdout is None:
            raise RuntimeError("no stdout from sluice up")
        for line in process.stdout:
            if line.startswith("Ctrl-C stops everything"):
                break
        else:
            raise RuntimeError("sluice up exited during start-up")
        yield Suite(process, ports, run_dir)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def chaos(args: argparse.Namespace, suite: Suite) -> dict[str, Any]:
    """Load the suite, break it, and return the figures."""
    scale = args.scale
    ports, run_dir = suite.ports, suite.run_dir
    run = Run()
    channel = suite_channel(f"127.0.0.1:{ports['router']}", find_certs(None, run_dir), "router")
    stub = router_pb2_grpc.RouterServiceStub(channel)
    origin = time.monotonic()
    tasks = [
        asyncio.create_task(worker(stub, run, i, args.concurrency, args.deadline_s))
        for i in range(args.concurrency)
    ]
    watcher = asyncio.create_task(
        watch_breakers(f"http://127.0.0.1:{ports['router_metrics']}/metrics", run)
    )

    async def phase(name: str, seconds: float) -> None:
        current = Phase(name, time.monotonic(), 0.0)
        run.phases.append(current)
        await asyncio.sleep(seconds)
        current.end = time.monotonic()

    try:
        gap = 8.0 * scale
        await asyncio.sleep(gap)  # steady state
        victim = read_pid(run_dir, "provider-2")
        kill = Phase("kill_replica", time.monotonic(), 0.0)
        run.phases.append(kill)
        os.kill(victim, signal.SIGKILL)
        for _ in range(600):  # until the supervisor has restarted it (30 s at most)
            if read_pid(run_dir, "provider-2") != victim:
                break
            await asyncio.sleep(0.05)
        kill.end = time.monotonic()
        await asyncio.sleep(gap)
        limiter = read_pid(run_dir, "limiter")
        os.kill(limiter, signal.SIGSTOP)
        try:
            await phase("freeze_limiter", args.freeze_s)
        finally:
            os.kill(limiter, signal.SIGCONT)
        await asyncio.sleep(gap)
        run.fault_header = "error_rate=1,backend=primary"
        await phase("primary_500s", args.outage_s)
        run.fault_header = ""
        await asyncio.sleep(max(gap, args.reset_timeout_s + 2.0))
        run.fault_header = "rate_limit_rate=1,retry_after_ms=200,backend=primary"
        await phase("429_storm", args.storm_s)
        run.fault_header = ""
        await asyncio.sleep(gap)
    finally:
        run.stop = True
        # Every stream has a deadline, so this ends; a stream past it counts as hung.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.deadline_s + 10)
        await watcher
        await channel.close()
    figures = summarise(run, origin, after_s=gap)
    figures["router_counters"] = await router_counters(
        f"http://127.0.0.1:{ports['router_metrics']}/metrics"
    )
    figures["elapsed_s"] = round(time.monotonic() - origin, 1)
    figures["concurrency"] = args.concurrency
    figures["replica_restarted"] = read_pid(run_dir, "provider-2") != victim
    figures["suite_alive"] = suite.process.poll() is None
    return figures


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--concurrency", type=int, default=50, help="streams in flight")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the quiet gaps between faults"
    )
    parser.add_argument("--freeze-s", type=float, default=5.0, help="limiter SIGSTOP length")
    parser.add_argument("--outage-s", type=float, default=10.0, help="primary 500s length")
    parser.add_argument("--storm-s", type=float, default=5.0, help="429 storm length")
    parser.add_argument(
        "--reset-timeout-s", type=float, default=5.0, help="breaker reset timeout for the run"
    )
    parser.add_argument("--deadline-s", type=float, default=30.0, help="per-stream deadline")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 500:
        parser.error("--concurrency must be within 1..500 (loopback load stays bounded)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with (
        tempfile.TemporaryDirectory(prefix="sluice-chaos-") as tmp,
        running_suite(args, Path(tmp)) as suite,
    ):
        figures = asyncio.run(chaos(args, suite))
    if args.json:
        print(json.dumps(figures))
    else:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
