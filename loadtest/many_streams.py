"""Many long streams at once: N concurrent SSE streams through Envoy against a real suite.

Starts `sluice up` (with Envoy) on free loopback ports, the simulated model set to answer
in `--answer-s` seconds on average (`--tokens-per-second`; each prompt's answer is 0.5 to
1.5 times as long; tokens sent every `--tick-ms`), and opens N streams
(`POST /v1/generate`) over `--ramp-s` seconds. Every stream that ends is replaced by a
new one until `--ramp-s + --hold-s`, so N stay open; then the last ones finish. Prints
completions, errors by kind (HTTP status, in-band error reason, truncation, client
exception), time to first token (request sent to the first `data` event) for the
streams opened during the ramp and for those opened after it, the adaptive limit the
router reached, Envoy's overflow counters, resident memory (peak per process and the
suite's peak sum, sampled every second from /proc) and CPU cores used per process.

The client is aiohttp on uvloop over HTTP/1.1 (one connection per stream), split over
`--clients` processes, one per 1,000 streams (measured: 1,000 streams of 5-token messages
cost a client process about 0.1 core, so its event loop never delays what it measures).
Bounded: every stream has a timeout, the run has a deadline, and the suite is stopped
by its pid.

    python loadtest/many_streams.py --streams 2000                 # 30 s answers
    python loadtest/many_streams.py --streams 100 --answer-s 3   # tests/e2e/test_many_streams.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import queue
import resource
import signal
import subprocess  # nosec B404 - we start our own `sluice up`
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.soak import free_ports, pct, read_process

DEV_KEY = "sk-sluice-dev"
PARTS = ("router", "limiter", "provider", "telemetry", "envoy")
PORTS = (
    "router", "router_metrics", "router_http", "limiter", "limiter_metrics", "provider",
    "provider_metrics", "telemetry", "telemetry_metrics", "envoy", "envoy_admin", "supervisor",
)  # fmt: skip
MAX_STREAMS = 10_000
STREAMS_PER_CLIENT = 1000  # what one client process keeps up with (measured)
_FIRST = b'"data":{'
_COMPLETE = b'"complete":{'
_ERROR = b'"error":{'
_TAIL = 16  # bytes kept across chunk boundaries when looking for a marker


def suite_config(ports: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    """The suite of the run: defaults everywhere except ports, the simulated model's pace,
    and request and stream limits high enough that the key's limits never refuse a stream."""
    tokens = answer_tokens(args)
    backend = {
        "time_to_first_token_ms": args.model_ttft_ms,
        "tokens_per_second": args.tokens_per_second,
        "min_tick_ms": args.tick_ms,
        # Each prompt's answer is 0.5-1.5 times this long (fixed per prompt), so streams
        # end, and are replaced, spread over time as in real traffic, not all together.
        "answer_tokens": min(100_000, tokens),
    }
    return {
        "tracing": {"endpoint": f"127.0.0.1:{ports['telemetry']}"},
        "router": {
            "server": {"port": ports["router"], "metrics_port": ports["router_metrics"]},
            "http_api": {"port": ports["router_http"]},
            "limiter_address": f"127.0.0.1:{ports['limiter']}",
            "provider_address": f"127.0.0.1:{ports['provider']}",
            "resilience": {"local_limit_rps": 100_000},
            "dev_mode": True,  # the streams use the public development key
            # Every stream uses the one key: its stream cap (256 by default) would refuse
            # the rest with 429 and measure the cap, not the suite's capacity.
            "streams": {"max_concurrent_streams": MAX_STREAMS},
        },
        "limiter": {
            "server": {"port": ports["limiter"], "metrics_port": ports["limiter_metrics"]},
            "per_key": {"capacity": 1_000_000, "refill_per_second": 1_000_000},
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


def answer_tokens(args: argparse.Namespace) -> int:
    """Tokens of the mean answer: the answer's seconds at the model's rate."""
    return max(1, round(float(args.answer_s) * float(args.tokens_per_second)))


# -- the client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    """What one client process runs: streams `first`, `first + stride`, … of N."""

    edge: str
    first: int
    stride: int
    streams: int
    origin_wall: float
    ramp_s: float
    open_until_s: float
    stream_timeout_s: float
    max_tokens: int


async def _one(session: aiohttp.ClientSession, edge: str, body: bytes) -> tuple[float | None, str]:
    """One stream: (seconds to its first `data` event, outcome: "ok" or what went wrong)."""
    sent = time.monotonic()
    first: float | None = None
    tail = b""
    async with session.post(f"{edge}/v1/generate", data=body) as response:
        if response.status != 200:
            await response.read()
            return None, f"HTTP {response.status}"
        async for chunk in response.content.iter_any():
            seen = tail + chunk
            if first is None and _FIRST in seen:
                first = time.monotonic() - sent
            if _COMPLETE in seen:
                return first, "ok"
            if _ERROR in seen:
                text = seen[seen.index(_ERROR) :].decode(errors="replace")
                reason = (
                    text.split('"reason":"', 1)[-1].split('"', 1)[0] if '"reason":"' in text else ""
                )
                return first, f"error {reason or 'unknown'}"
            tail = seen[-_TAIL:]
    return first, "truncated"


async def _slot(
    run: Slice, index: int, session: aiohttp.ClientSession, out: list[tuple[Any, ...]]
) -> None:
    """Keep one stream open: open, read to its end, open the next, until the window ends."""
    origin = run.origin_wall
    await asyncio.sleep(max(0.0, origin + index * run.ramp_s / run.streams - time.time()))
    serial = 0
    while (started := time.time() - origin) < run.open_until_s:
        message = {"role": "user", "content": f"long stream {index}.{serial}"}
        body = json.dumps(
            {"model": "default", "messages": [message], "max_tokens": run.max_tokens}
        ).encode()
        began = time.monotonic()
        try:
            ttft, outcome = await asyncio.wait_for(
                _one(session, run.edge, body), run.stream_timeout_s
            )
        except TimeoutError:
            ttft, outcome = None, "timeout"
        except (aiohttp.ClientError, OSError) as err:
            ttft, outcome = None, type(err).__name__
        out.append((round(started, 3), ttft, round(time.monotonic() - began, 3), outcome))
        serial += 1
        if outcome != "ok":
            await asyncio.sleep(0.5)  # no hot loop against a refusing edge


async def _client(run: Slice) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    headers = {"authorization": f"Bearer {DEV_KEY}", "content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:
        indices = range(run.first, run.streams, run.stride)
        await asyncio.gather(*(_slot(run, i, session, out) for i in indices))
    return out


def client_process(run: Slice, ready: Any, go: Any, origin: Any, results: Any) -> None:
    """Entry point of one client process: say it is ready (imports done), wait for the
    common start time, run its slice and send back its results."""
    ready.put(run.first)
    go.wait()
    run = replace(run, origin_wall=origin.value)
    try:
        import uvloop  # optional speed-up
    except ImportError:
        rows = asyncio.run(_client(run))
    else:
        rows = uvloop.run(_client(run))
    results.put((time.process_time(), rows))


# -- the suite ----------------------------------------------------------------------------


@contextlib.contextmanager
def running_suite(
    workdir: Path, args: argparse.Namespace
) -> Iterator[tuple[dict[str, int], Path, subprocess.Popen[str]]]:
    """Start `sluice up` with Envoy on free ports; yield (ports, run dir, process); stop it
    by its pid (SIGTERM, then SIGKILL after a bounded wait)."""
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    config = workdir / "many-streams.yaml"
    config.write_text(yaml.safe_dump(suite_config(ports, args)))
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
        banner = []
        for line in process.stdout:
            banner.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        else:
            raise RuntimeError(f"sluice up exited during start-up; see {workdir}")
        (workdir / "banner.txt").write_text("".join(banner))
        yield ports, run_dir, process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        log.close()


def _pids(run_dir: Path, supervisor: int) -> dict[str, int]:
    found = {"supervisor": supervisor}
    for part in PARTS:
        with contextlib.suppress(OSError, ValueError):
            found[part] = int((run_dir / f"{part}.pid").read_text())
    return found


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape(url: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    """Sample lines of a text exposition whose names start with one of `prefixes`."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310  # nosec B310
            text = response.read().decode()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        if line.startswith(prefixes):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                found[name.strip().rstrip(":")] = float(value)
    return found


# -- the run ------------------------------------------------------------------------------


def measure(
    args: argparse.Namespace, ports: dict[str, int], run_dir: Path, supervisor: int
) -> dict[str, Any]:
    """Drive the streams from `--clients` processes while sampling memory; the figures."""
    edge = f"http://127.0.0.1:{ports['envoy']}"
    clients = args.clients or max(1, math.ceil(args.streams / STREAMS_PER_CLIENT))
    open_until = args.ramp_s + args.hold_s
    stream_timeout = args.answer_s * 4 + 30
    slices = [
        Slice(edge, first, clients, args.streams, 0.0, args.ramp_s, open_until,
              stream_timeout, math.ceil(answer_tokens(args) * 1.5) + 1)
        for first in range(clients)
    ]  # fmt: skip
    context = get_context("spawn")
    ready, results_queue = context.Queue(), context.Queue()
    go, origin = context.Event(), context.Value("d", 0.0)
    processes = [
        context.Process(target=client_process, args=(s, ready, go, origin, results_queue))
        for s in slices
    ]
    for process in processes:
        process.start()
    peak: dict[str, float] = {}
    peak_total = 0.0
    results: list[tuple[Any, ...]] = []
    try:
        for _ in processes:
            ready.get(timeout=120)
        origin.value = time.time() + 0.2
        cpu_before = {name: _cpu_seconds(pid) for name, pid in _pids(run_dir, supervisor).items()}
        cpu: dict[str, float] = {}
        go.set()
        deadline = origin.value + open_until + stream_timeout + 30
        pending = len(processes)
        while pending:
            if time.time() > deadline:
                raise TimeoutError("the streams did not end within the run's deadline")
            total = 0.0
            for name, pid in _pids(run_dir, supervisor).items():
                figures = read_process(pid)
                if figures is not None:
                    peak[name] = max(peak.get(name, 0.0), figures[0])
                    total += figures[0]
            peak_total = max(peak_total, total)
            with contextlib.suppress(queue.Empty):
                client_cpu, rows = results_queue.get(timeout=1.0)
                results += rows
                cpu["clients"] = cpu.get("clients", 0.0) + client_cpu
                pending -= 1
        for name, pid in _pids(run_dir, supervisor).items():
            cpu[name] = _cpu_seconds(pid) - cpu_before.get(name, 0.0)
        elapsed = time.time() - origin.value
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    router = _scrape(
        f"http://127.0.0.1:{ports['router_metrics']}/metrics",
        ("sluice_router_concurrency_limit", "sluice_router_concurrency_ceiling"),
    )
    envoy = _scrape(
        f"http://127.0.0.1:{ports['envoy_admin']}/stats?filter=overflow|rq_503",
        ("cluster.router.",),
    )
    return summarise(
        args,
        results,
        clients=clients,
        peak=peak,
        peak_total=peak_total,
        router=router,
        envoy=envoy,
        cpu_share={k: round(v / elapsed, 2) for k, v in sorted(cpu.items())},
    )


def summarise(
    args: argparse.Namespace,
    results: list[tuple[Any, ...]],
    *,
    clients: int,
    peak: dict[str, float],
    peak_total: float,
    router: dict[str, float],
    envoy: dict[str, float],
    cpu_share: dict[str, float],
) -> dict[str, Any]:
    """The printed figures."""
    outcomes: dict[str, int] = {}
    for _, _, _, outcome in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    during = [ttft for started, ttft, _, ok in results if ok == "ok" and started < args.ramp_s]
    after = [ttft for started, ttft, _, ok in results if ok == "ok" and started >= args.ramp_s]
    durations = [seconds for _, _, seconds, ok in results if ok == "ok"]

    def percentiles(values: list[float]) -> dict[str, Any]:
        return {
            "n": len(values),
            "p50_ms": pct(values, 50),
            "p90_ms": pct(values, 90),
            "p99_ms": pct(values, 99),
            "max_ms": pct(values, 100),
        }

    return {
        "streams": args.streams,
        "answer_s": args.answer_s,
        "mean_tokens_per_answer": answer_tokens(args),
        "ramp_s": args.ramp_s,
        "hold_s": args.hold_s,
        "client_processes": clients,
        "started": len(results),
        "completed": outcomes.get("ok", 0),
        "errors": {k: v for k, v in sorted(outcomes.items()) if k != "ok"},
        "ttft_during_ramp": percentiles(during),
        "ttft_after_ramp": percentiles(after),
        "stream_seconds": percentiles(durations),
        "router_adaptive": router,
        "envoy_router_cluster": {k: v for k, v in envoy.items() if v},
        "rss_peak_mb": {k: round(v, 1) for k, v in sorted(peak.items())},
        "suite_rss_peak_mb": round(peak_total, 1),
        "cpu_cores_used": cpu_share,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams (N)")
    parser.add_argument("--answer-s", type=float, default=30.0, help="seconds per answer")
    parser.add_argument("--tokens-per-second", type=float, default=20.0, help="model pace")
    parser.add_argument(
        "--tick-ms",
        type=float,
        default=250.0,
        help="model's shortest gap between deltas (250: 5 tokens a message at 20/s; "
        "50: one each, which at 2,000 streams is more messages than 2 cores relay)",
    )
    parser.add_argument(
        "--model-ttft-ms", type=float, default=20.0, help="model's time to first token"
    )
    parser.add_argument(
        "--ramp-s", type=float, help="seconds to open the N streams (default N/200, at least 2)"
    )
    parser.add_argument(
        "--hold-s",
        type=float,
        help="seconds after the ramp that ended streams are replaced (default answer + 5)",
    )
    parser.add_argument(
        "--clients", type=int, default=0, help="client processes (default one per 1,000 streams)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one line")
    parser.add_argument("--keep", help="keep the suite's files (config, logs) in this directory")
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= MAX_STREAMS:
        parser.error(f"--streams must be within 1..{MAX_STREAMS}")
    if not 0.5 <= args.answer_s <= 300:
        parser.error("--answer-s must be within 0.5..300")
    if not 1 <= args.tokens_per_second <= 1000:
        parser.error("--tokens-per-second must be within 1..1000")
    if args.ramp_s is None:
        args.ramp_s = max(2.0, args.streams / 200)
    if args.hold_s is None:
        args.hold_s = args.answer_s + 5
    if not 0 < args.ramp_s <= 600 or not 0 <= args.hold_s <= 3600:
        parser.error("--ramp-s must be within 0..600 and --hold-s within 0..3600")
    if not 0 <= args.clients <= 32:
        parser.error("--clients must be within 0..32")
    return args


def _raise_open_files_limit() -> None:
    """Every stream is a socket in a client and in Envoy (the suite and the client
    processes inherit this limit): raise the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _raise_open_files_limit()
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(args.keep)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-many-")))
        ports, run_dir, process = stack.enter_context(running_suite(workdir, args))
        figures = measure(args, ports, run_dir, process.pid)
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
