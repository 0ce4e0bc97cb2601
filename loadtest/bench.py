"""`make bench`: start a private suite on free loopback ports, load it, print the figures.

The suite runs with `sluice up --config <temp>`; its ports are all free ones picked at
start, so a bench can run beside a suite already using the default ports. Each scenario
runs the load generator (generate_load.py) as a separate process, so the suite's CPU
(summed over the `sluice up` supervisor and every descendant, Envoy included, from
/proc/<pid>/stat) never includes the generator's; the generator reports its own CPU,
printed beside.

    python loadtest/bench.py [--duration 8] [--only st0-envoy-c50,...] [--pin] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

HERE = Path(__file__).resolve().parent
GENERATOR = HERE / "generate_load.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARTS = ("router", "provider", "limiter", "telemetry", "envoy", "supervisor")
ANSWER_TOKENS = 20


@dataclass(frozen=True)
class Scenario:
    """One bounded run of the load generator."""

    name: str
    via: str
    """"envoy" or "router": where the generator connects."""
    model: str
    """Router model alias; each maps to a differently paced simulated back end."""
    concurrency: int
    about: str
    transport: str = "grpc"
    """"grpc", "sse" (/v1/generate) or "openai" (/v1/chat/completions)."""


SCENARIOS = (
    Scenario("st0-envoy-c1", "envoy", "instant", 1, "20 tokens at once, via Envoy"),
    Scenario("st0-envoy-c50", "envoy", "instant", 50, "20 tokens at once, via Envoy"),
    Scenario("st0-router-c1", "router", "instant", 1, "20 tokens at once, router direct"),
    Scenario("st0-router-c50", "router", "instant", 50, "20 tokens at once, router direct"),
    Scenario("st10-envoy-c50", "envoy", "paced", 50, "20 tokens 10 ms apart, via Envoy"),
    Scenario(
        "st0x20-envoy-c50", "envoy", "burst", 50, "20 tokens at 2000/s (0.5 ms ticks), via Envoy"
    ),
    # The edge's HTTP protocols against native gRPC to the router, same load.
    Scenario("st0x20-router-c1", "router", "burst", 1, "20 events, native gRPC, router direct"),
    Scenario("st0x20-sse-c1", "envoy", "burst", 1, "20 events, SSE /v1/generate via Envoy", "sse"),
    Scenario("st0x20-openai-c1", "envoy", "burst", 1, "20 events, OpenAI SSE via Envoy", "openai"),
    Scenario("st0x20-router-c50", "router", "burst", 50, "20 events, native gRPC, router direct"),
    Scenario(
        "st0x20-sse-c50", "envoy", "burst", 50, "20 events, SSE /v1/generate via Envoy", "sse"
    ),
    Scenario(
        "st0x20-openai-c50", "envoy", "burst", 50, "20 events, OpenAI SSE via Envoy", "openai"
    ),
)

# Simulated back ends. answer_tokens 40 makes the natural answer 20..60 tokens, so
# max_tokens=20 always yields exactly 20 (finish reason LENGTH).
BACKENDS: dict[str, dict[str, Any]] = {
    # Whole answer in one delta: one data event per stream.
    "instant": {"time_to_first_token_ms": 0, "tokens_per_second": 0, "answer_tokens": 40},
    # 100 tokens/s = 10 ms per token: one data event per token (fewer when ticks run late).
    "paced": {
        "time_to_first_token_ms": 0,
        "tokens_per_second": 100,
        "min_tick_ms": 1,
        "answer_tokens": 40,
    },
    # One data event per token at the shortest tick (0.5 ms), so up to 20 events per
    # stream: the per-event cost at full speed. Under load, late ticks coalesce tokens.
    "burst": {
        "time_to_first_token_ms": 0,
        "tokens_per_second": 2000,
        "min_tick_ms": 0.5,
        "answer_tokens": 40,
    },
}


# -- ports and config -------------------------------------------------------------------


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct free TCP ports (all held open until every one is chosen)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def suite_config(tracing_ratio: float | None) -> dict[str, Any]:
    """A suite config on free loopback ports with the bench's back ends and a huge bucket."""
    host = "127.0.0.1"
    ports = iter(free_ports(11, host))

    def server() -> dict[str, Any]:
        return {
            "host": host,
            "port": next(ports),
            "metrics_port": next(ports),
            "shutdown_grace_s": 2.0,
        }

    servers = {name: server() for name in ("router", "limiter", "provider", "telemetry")}
    tracing: dict[str, Any] = {"endpoint": f"{host}:{servers['telemetry']['port']}"}
    if tracing_ratio is not None:
        tracing["sample_ratio"] = tracing_ratio
        tracing["enabled"] = tracing_ratio > 0
    return {
        "tracing": tracing,
        "router": {
            "server": servers["router"],
            "dev_mode": True,  # the load uses the public development key
            "http_api": {"host": host, "port": next(ports)},
            "limiter_address": f"{host}:{servers['limiter']['port']}",
            "provider_address": f"{host}:{servers['provider']['port']}",
            "models": {
                "default": {"backends": [{"backend": "instant"}]},
                **{name: {"backends": [{"backend": name}]} for name in BACKENDS},
            },
        },
        "limiter": {
            "server": servers["limiter"],
            "per_key": {"capacity": 1e9, "refill_per_second": 1e9},
        },
        "provider": {"server": servers["provider"], "backends": BACKENDS},
        "telemetry": {"server": servers["telemetry"]},
        "envoy": {"host": host, "port": next(ports), "admin_port": next(ports), "drain_time_s": 1},
        "supervisor": {"metrics_port": 0},  # a free port: never another suite's
    }


# -- /proc accounting -------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime in ticks) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12])


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def part_name(pid: int, root: int) -> str:
    """Which part of the suite a process is."""
    if pid == root:
        return "supervisor"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    words = [a.decode(errors="replace") for a in argv if a]
    if words and Path(words[0]).name.startswith("envoy"):
        return "envoy"
    for word in words:
        if word.startswith("sluice.") and word.count(".") == 1:
            return word.split(".", 1)[1]
    return "other"


class SuiteCpu:
    """CPU seconds of the suite's process tree, by part."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.names: dict[int, str] = {}

    def sample(self) -> dict[str, float]:
        """CPU seconds used so far by each part (threads included), plus 'total'."""
        seconds: dict[str, float] = dict.fromkeys((*PARTS, "other"), 0.0)
        for pid in descendants(self.root):
            stat = _stat(pid)
            if stat is None:
                continue
            name = self.names.get(pid)
            if name is None:
                name = self.names[pid] = part_name(pid, self.root)
            seconds[name] += stat[1] / CLK_TCK
        seconds["total"] = sum(seconds.values())
        return seconds


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


# -- the suite --------------------------------------------------------------------------


def _pin(cpus: set[int] | None) -> Any:
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class RunningSuite:
    """`sluice up` as a child process; a context manager that always stops it."""

    def __init__(self, config: Path, workdir: Path, cpus: set[int] | None) -> None:
        self.config = config
        self.workdir = workdir
        self.cpus = cpus
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: dict[int, str] = {}
        self._up = threading.Event()
        self._output: IO[bytes] | None = None

    def _command(self) -> list[str]:
        beside = Path(sys.executable).parent / "sluice"
        launcher = (
            [str(beside)] if beside.is_file() else [sys.executable, "-m", "sluice.launcher.cli"]
        )
        return [
            *launcher,
            "up",
            "--config", str(self.config),
            "--log-dir", str(self.workdir / "logs"),
            "--run-dir", str(self.workdir / "run"),
        ]  # fmt: skip

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        assert self._output is not None
        for line in self.process.stdout:
            self._output.write(line)
            self._output.flush()
            if line.startswith(b"Sluice is up"):
                self._up.set()

    def start(self) -> None:
        """Start `sluice up` and wait for its banner; stops it again on failure."""
        self._output = (self.workdir / "sluice-up.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own launcher
            self._command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_pin(self.cpus),  # noqa: PLW1509 - no threads in the child yet
        )
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            deadline = time.monotonic() + 120.0
            while not self._up.wait(0.2):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"sluice up exited with {self.process.returncode}; see {self.workdir}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sluice up not ready in 120 s; see {self.workdir}")
            self.pids = {
                pid: part_name(pid, self.process.pid) for pid in descendants(self.process.pid)
            }
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> RunningSuite:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[str]:
        """SIGTERM the supervisor, wait, and kill any part still alive; returns leftovers."""
        if self.process is None:
            return []
        known = dict(self.pids)
        if self.process.poll() is None:
            known.update(
                {pid: part_name(pid, self.process.pid) for pid in descendants(self.process.pid)}
            )
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10.0)
        known.pop(self.process.pid, None)
        left = [f"{name} (pid {pid})" for pid, name in known.items() if _stat(pid) is not None]
        for pid in known:
            if _stat(pid) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._output is not None:
            self._output.close()
        self.process = None
        return left

    @property
    def certs(self) -> Path | None:
        """The certificates `sluice up` made (mutual TLS, the default), else None."""
        directory = self.workdir / "run" / "certs"
        return directory if (directory / "ca.pem").is_file() else None

    def address(self, config: dict[str, Any], via: str) -> str:
        """host:port of Envoy's edge or of the router."""
        if via == "envoy":
            return f"{config['envoy']['host']}:{config['envoy']['port']}"
        server = config["router"]["server"]
        return f"{server['host']}:{server['port']}"


# -- one scenario -----------------------------------------------------------------------


def _read_line(stream: IO[str], want: str, timeout_s: float, process: Any) -> str:
    """The next stdout line starting with `want` (others are echoed to stderr)."""
    result: list[str] = []

    def reader() -> None:
        for line in stream:
            if line.startswith(want):
                result.append(line)
                return
            sys.stderr.write(f"  generator: {line}")
        result.append("")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not result or not result[0]:
        process.kill()
        raise RuntimeError(f"load generator: no {want} line (exit {process.poll()})")
    return result[0]


def run_scenario(
    scenario: Scenario,
    target: str,
    cpu: SuiteCpu,
    *,
    duration_s: float,
    settle_s: float,
    cpus: set[int] | None,
    certs: Path | None = None,
) -> dict[str, Any]:
    """Run the generator once; returns its figures plus the suite's CPU over the run.
    `certs`: dial the router itself over mutual TLS (loadtest/tls.py)."""
    command = [
        sys.executable, str(GENERATOR), "--protocol",
        "--target", target,
        "--model", scenario.model,
        "-c", str(scenario.concurrency),
        "-d", str(duration_s),
        "--max-tokens", str(ANSWER_TOKENS),
        "--transport", scenario.transport,
        *(["--certs", str(certs)] if certs is not None else []),
    ]  # fmt: skip
    generator = subprocess.Popen(  # noqa: S603 - our own generator
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_pin(cpus),  # noqa: PLW1509 - no threads in the child yet
    )
    assert generator.stdin is not None and generator.stdout is not None
    try:
        _read_line(generator.stdout, "READY", 60.0, generator)
        before = cpu.sample()
        started = time.monotonic()
        generator.stdin.write("go\n")
        generator.stdin.flush()
        _read_line(generator.stdout, "DONE", duration_s + 60.0, generator)
        active = _delta(cpu.sample(), before)
        active_s = time.monotonic() - started
        # Span export and other after-the-fact work of these requests lands within the
        # exporters' batch delay: count it too.
        time.sleep(settle_s)
        total = _delta(cpu.sample(), before)
        line = _read_line(generator.stdout, "RESULT", 30.0, generator)
        generator.wait(timeout=30.0)
    finally:
        if generator.poll() is None:
            generator.kill()
            generator.wait()
    figures: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    n = max(1, figures["requests"])
    figures.update(
        name=scenario.name,
        about=scenario.about,
        via=scenario.via,
        model=scenario.model,
        window_s=round(active_s + settle_s, 3),
        suite_cpu_s=round(total["total"], 3),
        suite_cpu_ms_per_request=round(total["total"] * 1000.0 / n, 3),
        suite_cpu_ms_per_request_active=round(active["total"] * 1000.0 / n, 3),
        suite_cores=round(active["total"] / active_s, 3) if active_s else 0.0,
        cpu_ms_per_request_by_part={
            part: round(total[part] * 1000.0 / n, 3) for part in (*PARTS, "other") if total[part]
        },
    )
    return figures


# -- output -----------------------------------------------------------------------------


def print_tables(results: list[dict[str, Any]], idle_ms_per_s: float) -> None:
    """The compact table plus the CPU breakdown by part."""
    head = (
        f"{'scenario':<17} {'req':>6} {'req/s':>7} {'lat p50/p95/p99 ms':>20} "
        f"{'TTFT p50/p95/p99 ms':>20} {'ev/req':>6} {'err':>4} {'suite CPU':>9} {'cores':>5} "
        f"{'gen CPU':>7}"
    )
    print()
    print(head)
    print(f"{'':<82} {'ms/req':>9} {'':>5} {'ms/req':>7}")

    def ms(values: dict[str, float | None]) -> str:
        return "/".join("     -" if v is None else f"{v:>6.1f}" for v in values.values())

    for r in results:
        print(
            f"{r['name']:<17} {r['requests']:>6} {r['rps']:>7.0f} "
            f"{ms(r['latency_ms'])} {ms(r['ttft_ms'])} "
            f"{r['data_events_per_request']:>6.1f} {r['errors']:>4} "
            f"{r['suite_cpu_ms_per_request']:>9.3f} {r['suite_cores']:>5.2f} "
            f"{r['loadgen_cpu_ms_per_request']:>7.3f}"
        )
    print()
    print("suite CPU ms/request by part (incl. settle window):")
    print(f"{'scenario':<17} " + " ".join(f"{p:>10}" for p in PARTS))
    for r in results:
        by = r["cpu_ms_per_request_by_part"]
        print(f"{r['name']:<17} " + " ".join(f"{by.get(p, 0.0):>10.3f}" for p in PARTS))
    print(f"\nidle suite CPU: {idle_ms_per_s:.2f} ms per second (included above, not subtracted)")
    errors = {r["name"]: r["errors_by_code"] for r in results if r["errors"]}
    if errors:
        print(f"errors by code: {errors}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per scenario")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds counted after each")
    names = ",".join(s.name for s in SCENARIOS)
    parser.add_argument("--only", help=f"comma-separated scenarios (of {names})")
    parser.add_argument("--pin", action="store_true", help="suite on CPU 0, generator on CPU 1")
    parser.add_argument(
        "--tracing-ratio", type=float, help="tracing sample ratio (default: the suite's, 1.0)"
    )
    parser.add_argument("--json", help="write all results as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (config, logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the suite, run every scenario, print and save the figures, stop the suite."""
    args = _parse(argv)
    # SIGTERM (and SIGINT even when started in the background) unwind through the
    # finally below, which stops the suite.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    chosen = list(SCENARIOS)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        unknown = wanted - {s.name for s in SCENARIOS}
        if unknown:
            print(f"unknown scenarios: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        chosen = [s for s in SCENARIOS if s.name in wanted]
    suite_cpus: set[int] | None = None
    gen_cpus: set[int] | None = None
    if args.pin:
        available = os.sched_getaffinity(0)
        if not {0, 1} <= available:
            print("--pin needs CPUs 0 and 1", file=sys.stderr)
            return 2
        suite_cpus, gen_cpus = {0}, {1}

    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    config = suite_config(args.tracing_ratio)
    config_file = workdir / "suite.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    print(f"bench dir {workdir}; starting the suite...", flush=True)
    results: list[dict[str, Any]] = []
    suite = RunningSuite(config_file, workdir, suite_cpus)
    leftovers: list[str] = []
    idle_ms_per_s = 0.0
    try:
        suite.start()
        assert suite.process is not None
        cpu = SuiteCpu(suite.process.pid)
        found = sorted(set(suite.pids.values()))
        print(f"suite up: {len(suite.pids)} processes ({', '.join(found)})", flush=True)
        time.sleep(1.0)  # let start-up work (health checks, first exports) settle
        idle_before = cpu.sample()
        time.sleep(3.0)
        idle_ms_per_s = _delta(cpu.sample(), idle_before)["total"] * 1000.0 / 3.0
        for scenario in chosen:
            target = suite.address(config, scenario.via)
            print(f"running {scenario.name} ({scenario.about}, c={scenario.concurrency})...",
                  flush=True)  # fmt: skip
            figures = run_scenario(
                scenario,
                target,
                cpu,
                duration_s=args.duration,
                settle_s=args.settle,
                cpus=gen_cpus,
                certs=suite.certs if scenario.via == "router" else None,
            )
            results.append(figures)
            print(
                f"  {figures['requests']} requests, {figures['rps']:.0f} req/s, "
                f"{figures['errors']} errors, suite {figures['suite_cpu_ms_per_request']:.3f}"
                " ms CPU/request",
                flush=True,
            )
    except BaseException:
        print(f"bench failed; config and logs kept in {workdir}", file=sys.stderr)
        args.keep = True
        raise
    finally:
        leftovers = suite.stop()
    print_tables(results, idle_ms_per_s)
    if leftovers:
        print(f"WARNING: processes left after stop (killed): {', '.join(leftovers)}")
    else:
        print("suite stopped; no process left behind.")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "clk_tck": CLK_TCK,
                        "pinned": bool(args.pin),
                    },
                    "duration_s": args.duration,
                    "settle_s": args.settle,
                    "idle_suite_cpu_ms_per_s": round(idle_ms_per_s, 3),
                    "suite_config": config,
                    "scenarios": results,
                    "leftover_processes": leftovers,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        print(f"results written to {args.json}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}")
    return 1 if leftovers or any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:
        print(f"interrupted ({stop}); suite stopped", file=sys.stderr)
        sys.exit(130)
