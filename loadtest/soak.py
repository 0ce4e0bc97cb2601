"""Soak: the real suite (`sluice up` with Envoy) under a steady mixed load for a while.

Starts the suite on free loopback ports and keeps `--concurrency` streams in flight
through Envoy for `--duration` seconds, spread evenly over three kinds: SSE
(`POST /v1/generate`), native gRPC (`RouterService/Generate`) and OpenAI-compatible
streams (`POST /v1/chat/completions`, `stream: true`). A request succeeds when its
stream ends properly (`complete`, or `finish_reason` then `[DONE]`). Every `--interval`
seconds it samples each process of the suite (resident memory, open files, threads,
from /proc), each service's /metrics (how many series: labels that grow with ids would
show; every in-memory store's `*_used_bytes` against its `*_bound_bytes`) and the
interval's requests, error rate and p99 latency. At the end it
prints availability, p99 drift (last interval against the first) and the memory slope
per process in MB/hour (least squares over the samples after the first tenth, so
start-up growth does not count, and over the second half, once the in-memory stores
have filled up to their bounds). Bounded: the duration is capped and it stops itself.

    python loadtest/soak.py --duration 3600                 # one hour, a sample a minute
    python loadtest/soak.py --duration 90 --interval 10     # the shortened test run
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

from sluice.common.v1 import common_pb2
from sluice.router.v1 import router_pb2, router_pb2_grpc

DEV_KEY = "sk-sluice-dev"
AUTH = {"authorization": f"Bearer {DEV_KEY}"}
KINDS = ("sse", "grpc", "openai")
PARTS = ("router", "limiter", "provider", "telemetry", "envoy")
SERVICES = ("router", "limiter", "provider", "telemetry")
PORTS = (
    "router", "router_metrics", "router_http", "limiter", "limiter_metrics", "provider",
    "provider_metrics", "telemetry", "telemetry_metrics", "envoy", "envoy_admin", "supervisor",
)  # fmt: skip
MAX_DURATION_S = 7 * 24 * 3600


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


def soak_config(ports: dict[str, int], sample_ratio: float = 0.1) -> dict[str, Any]:
    """The suite of the run: every part on its own free port, tracing on (10 % of traces
    by default; 1.0 exports every trace, so telemetry's stores fill and churn ten times
    as fast: its memory plateau shows within an hour rather than a day)."""
    backend = {"time_to_first_token_ms": 30, "tokens_per_second": 100, "answer_tokens": 20}
    return {
        "tracing": {
            "endpoint": f"127.0.0.1:{ports['telemetry']}",
            "sample_ratio": sample_ratio,
        },
        "router": {
            "server": {"port": ports["router"], "metrics_port": ports["router_metrics"]},
            "dev_mode": True,  # the load uses the public development key
            "http_api": {"port": ports["router_http"]},
            "limiter_address": f"127.0.0.1:{ports['limiter']}",
            "provider_address": f"127.0.0.1:{ports['provider']}",
            "resilience": {"local_limit_rps": 5000},
        },
        "limiter": {
            "server": {"port": ports["limiter"], "metrics_port": ports["limiter_metrics"]},
            "per_key": {"capacity": 100_000, "refill_per_second": 100_000},
        },
        "provider": {
            "server": {"port": ports["provider"], "metrics_port": ports["provider_metrics"]},
            "backends": {"simulated": backend},
        },
        "telemetry": {
            "server": {"port": ports["telemetry"], "metrics_port": ports["telemetry_metrics"]},
        },
        "envoy": {"port": ports["envoy"], "admin_port": ports["envoy_admin"]},
        "supervisor": {"metrics_port": ports["supervisor"]},
    }


@dataclass(slots=True)
class Result:
    """One request."""

    kind: str
    started: float
    seconds: float
    ok: bool
    error: str = ""


@dataclass
class ProcessSample:
    """One process at one moment."""

    t_s: float
    pid: int
    rss_mb: float
    open_files: int
    threads: int


@dataclass
class Run:
    """Shared state of the run."""

    origin: float
    results: list[Result] = field(default_factory=list)
    samples: dict[str, list[ProcessSample]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    """Each service's /metrics port (read from the suite's config)."""
    intervals: list[dict[str, Any]] = field(default_factory=list)
    stop: bool = False


def sse_ok(lines: list[str]) -> bool:
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    return bool(events) and "complete" in events[-1]


def openai_ok(lines: list[str]) -> bool:
    data = [line[6:] for line in lines if line.startswith("data: ")]
    if len(data) < 2 or data[-1] != "[DONE]":
        return False
    return any(json.loads(chunk)["choices"][0].get("finish_reason") for chunk in data[:-1])


async def one_http(client: httpx.AsyncClient, kind: str, index: int) -> tuple[bool, str]:
    message = [{"role": "user", "content": f"soak {kind} {index}"}]
    if kind == "sse":
        path, body = "/v1/generate", {"model": "default", "messages": message, "max_tokens": 20}
    else:
        path = "/v1/chat/completions"
        body = {"model": "default", "messages": message, "max_tokens": 20, "stream": True}
    async with client.stream("POST", path, json=body, headers=AUTH) as response:
        lines = [line async for line in response.aiter_lines()]
    if response.status_code != 200:
        return False, f"HTTP {response.status_code}"
    ok = sse_ok(lines) if kind == "sse" else openai_ok(lines)
    return ok, "" if ok else "TRUNCATED"


async def one_grpc(stub: router_pb2_grpc.RouterServiceStub, index: int) -> tuple[bool, str]:
    request = router_pb2.GenerateRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content=f"soak grpc {index}")],
        max_tokens=20,
    )
    last = ""
    async for event in stub.Generate(request, metadata=list(AUTH.items()), timeout=30):
        last = event.WhichOneof("event") or ""
    return last == "complete", "" if last == "complete" else "TRUNCATED"


async def worker(run: Run, kind: str, edge: str, first: int, stride: int) -> None:
    index = first
    async with (
        httpx.AsyncClient(base_url=edge, trust_env=False, timeout=30) as client,
        grpc.aio.insecure_channel(edge.removeprefix("http://")) as channel,
    ):
        stub = router_pb2_grpc.RouterServiceStub(channel)
        while not run.stop:
            started = time.monotonic()
            try:
                if kind == "grpc":
                    ok, error = await one_grpc(stub, index)
                else:
                    ok, error = await one_http(client, kind, index)
            except grpc.aio.AioRpcError as err:
                ok, error = False, err.code().name
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as err:
                ok, error = False, type(err).__name__
            run.results.append(Result(kind, started, time.monotonic() - started, ok, error))
            index += stride


def read_process(pid: int) -> tuple[float, int, int] | None:
    """(RSS MB, open files, threads) of a live process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        open_files = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    return rss_kb / 1024, open_files, int(fields["Threads"])


def read_metrics(port: int) -> tuple[int, dict[str, list[float]]]:
    """(series, {store: [used MB, bound MB]}) from one service's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    series = 0
    stores: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series += 1
        name, _, value = line.rpartition(" ")
        for kind, index in (("_used_bytes", 0), ("_bound_bytes", 1)):
            metric, _, labels = name.partition("{")
            if metric.endswith(kind):
                store = metric.removesuffix(kind).removeprefix("sluice_")
                label = labels.rstrip("}").partition('store="')[2].partition('"')[0]
                entry = stores.setdefault(f"{store}:{label}" if label else store, [0.0, 0.0])
                entry[index] = round(float(value) / 2**20, 2)
    return series, stores


def sample_metrics(run: Run) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Series per service and every store's [used MB, bound MB]."""
    series: dict[str, int] = {}
    stores: dict[str, list[float]] = {}
    for part, port in run.metrics_ports.items():
        with contextlib.suppress(httpx.HTTPError, ValueError):
            series[part], found = read_metrics(port)
            stores.update(found)
    return series, stores


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * 1000, 1)


def sample(run: Run, run_dir: Path, since: float) -> dict[str, Any]:
    """Sample every process and the requests that ended since `since`."""
    now = time.monotonic()
    t_s = round(now - run.origin, 1)
    for part in PARTS:
        with contextlib.suppress(OSError, ValueError):
            pid = int((run_dir / f"{part}.pid").read_text())
            figures = read_process(pid)
            if figures is not None:
                rss, files, threads = figures
                run.samples.setdefault(part, []).append(
                    ProcessSample(t_s, pid, round(rss, 1), files, threads)
                )
    recent = [r for r in run.results if since <= r.started + r.seconds < now]
    failed = sum(not r.ok for r in recent)
    series, stores = sample_metrics(run)
    interval = {
        "t_s": t_s,
        "requests": len(recent),
        "failed": failed,
        "error_rate": round(failed / len(recent), 5) if recent else None,
        "p99_ms": pct([r.seconds for r in recent if r.ok], 99),
        "rss_mb": {part: s[-1].rss_mb for part, s in run.samples.items() if s},
        "series": series,
        "stores_mb": stores,
    }
    run.intervals.append(interval)
    return interval


def slope_mb_per_hour(samples: list[ProcessSample]) -> float | None:
    """Least-squares slope of RSS over time, after the first tenth of the samples."""
    kept = samples[len(samples) // 10 :]
    if len(kept) < 3:
        return None
    xs = [s.t_s for s in kept]
    ys = [s.rss_mb for s in kept]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return round(slope * 3600, 2)


def summarise(run: Run, elapsed_s: float) -> dict[str, Any]:
    """Availability, p99 drift and per-process figures."""
    results = run.results
    failed = [r for r in results if not r.ok]
    errors: dict[str, int] = {}
    for result in failed:
        key = f"{result.kind}:{result.error}"
        errors[key] = errors.get(key, 0) + 1
    p99s = [i["p99_ms"] for i in run.intervals if i["p99_ms"] is not None]
    processes = {}
    for part, samples in run.samples.items():
        processes[part] = {
            "rss_mb_first": samples[0].rss_mb,
            "rss_mb_last": samples[-1].rss_mb,
            "rss_mb_max": max(s.rss_mb for s in samples),
            "rss_slope_mb_per_hour": slope_mb_per_hour(samples),
            # Stores fill up to their bounds first: a plateau shows in the second half.
            "rss_slope_mb_per_hour_last_half": slope_mb_per_hour(samples[len(samples) // 2 :]),
            "open_files_first": samples[0].open_files,
            "open_files_last": samples[-1].open_files,
            "threads_first": samples[0].threads,
            "threads_last": samples[-1].threads,
            "restarts": len({s.pid for s in samples}) - 1,
        }
    # Label sets appear as the first requests pass: series count from the first interval
    # under load.
    first, last = (run.intervals[1], run.intervals[-1]) if len(run.intervals) > 1 else ({}, {})
    return {
        "elapsed_s": round(elapsed_s, 1),
        "requests": len(results),
        "requests_per_s": round(len(results) / elapsed_s, 1) if elapsed_s else None,
        "by_kind": {kind: sum(r.kind == kind for r in results) for kind in KINDS},
        "failed": len(failed),
        "errors": errors,
        "availability": round(1 - len(failed) / len(results), 6) if results else None,
        "p99_ms": pct([r.seconds for r in results if r.ok], 99),
        "p99_ms_first_interval": p99s[0] if p99s else None,
        "p99_ms_last_interval": p99s[-1] if p99s else None,
        "p99_drift_ms": round(p99s[-1] - p99s[0], 1) if len(p99s) > 1 else None,
        "processes": processes,
        # Labels that grow with request, trace or user ids would show as growing series.
        "series_first": first.get("series", {}),
        "series_last": last.get("series", {}),
        # [used MB, bound MB] of every in-memory store at the end: at its bound, a store
        # has stopped growing, so the slope after that is the plateau (or a leak).
        "stores_mb_last": last.get("stores_mb", {}),
        "intervals": len(run.intervals),
    }


async def soak(args: argparse.Namespace, edge: str, run_dir: Path) -> dict[str, Any]:
    """Hold the load for the duration, sampling every interval; return the figures."""
    run = Run(origin=time.monotonic(), metrics_ports=metrics_ports(run_dir))
    tasks = [
        asyncio.create_task(worker(run, KINDS[i % len(KINDS)], edge, i, args.concurrency))
        for i in range(args.concurrency)
    ]
    end = run.origin + args.duration
    since = run.origin
    # SIGTERM or SIGINT ends a long run early with its figures so far.
    ending = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ValueError, RuntimeError):  # not the main thread (the test)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, ending.set)
    sample(run, run_dir, since)  # the processes before the load has grown anything
    try:
        while (now := time.monotonic()) < end and not ending.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ending.wait(), min(args.interval, end - now))
            interval = sample(run, run_dir, since)
            since = time.monotonic()
            if not args.quiet:
                print(json.dumps(interval), flush=True)
    finally:
        run.stop = True
        # Every request has a 30 s timeout, so the workers end.
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    return summarise(run, time.monotonic() - run.origin)


def metrics_ports(run_dir: Path) -> dict[str, int]:
    """Each service's metrics port, from the config `running_suite` wrote beside run_dir."""
    config = run_dir.parent / "soak.yaml"
    if not config.is_file():
        return {}
    suite = yaml.safe_load(config.read_text())
    return {part: int(suite[part]["server"]["metrics_port"]) for part in SERVICES}


@contextlib.contextmanager
def running_suite(
    workdir: Path, sample_ratio: float = 0.1
) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    """Start `sluice up` with Envoy on free ports; yield (edge URL, run dir, process)."""
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    config = workdir / "soak.yaml"
    config.write_text(yaml.safe_dump(soak_config(ports, sample_ratio)))
    run_dir = workdir / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    sluice = str(Path(sys.executable).parent / "sluice")
    log = (workdir / "sluice-up.log").open("w")
    process = subprocess.Popen(  # noqa: S603  # nosec B603
        [sluice, "up", "--config", str(config), "--run-dir", str(run_dir),
         "--log-dir", str(workdir / "logs")],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )  # fmt: skip
    try:
        if process.stdout is None:
            raise RuntimeError("no stdout from sluice up")
        for line in process.stdout:
            if line.startswith("Ctrl-C stops everything"):
                break
        else:
            raise RuntimeError(f"sluice up exited during start-up; see {workdir}")
        yield f"http://127.0.0.1:{ports['envoy']}", run_dir, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        log.close()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("-c", "--concurrency", type=int, default=6, help="streams in flight")
    parser.add_argument("--quiet", action="store_true", help="no line per interval")
    parser.add_argument("--json", action="store_true", help="print the summary as one line")
    parser.add_argument("--keep", help="keep the suite's files (logs) in this directory")
    parser.add_argument(
        "--sample-ratio", type=float, default=0.1,
        help="share of traces exported to telemetry (1.0: all, to fill its stores fast)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be within 1..{MAX_DURATION_S}")
    if not 1 <= args.interval <= args.duration:
        parser.error("--interval must be within 1..duration")
    if not 1 <= args.concurrency <= 300:
        parser.error("--concurrency must be within 1..300 (loopback load stays bounded)")
    if not 0.0 < args.sample_ratio <= 1.0:
        parser.error("--sample-ratio must be within (0, 1]")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # While the suite starts or stops, SIGTERM and SIGINT (ignored by a shell's background
    # job) interrupt, so the suite is still stopped; during the load, `soak` handles them.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(args.keep)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-soak-")))
        edge, run_dir, _ = stack.enter_context(running_suite(workdir, args.sample_ratio))
        figures = asyncio.run(soak(args, edge, run_dir))
        for signum in (signal.SIGTERM, signal.SIGINT):  # asyncio.run reset them
            signal.signal(signum, _interrupt)
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
