"""Kill -9 of one replica of each part under steady mixed load: what fails, and how long
until the part is back and serving.

Starts `sluice up --replicas router=2,provider=2,limiter=2` (with Envoy and the shared
store) on free loopback ports, sends a steady open-loop load through Envoy — SSE
(`POST /v1/generate`), native gRPC (`RouterService/Generate`) and OpenAI-compatible
streams (`POST /v1/chat/completions`, `stream: true`) in turn, `--rate` new streams a
second — and kills, one after another, a provider, a limiter and a router replica with
SIGKILL. Every stream is classified by how it ended:

- `complete`: its end event (`complete`; `finish_reason` then `[DONE]`);
- `error`: an error the client sees — an in-band `error` event, an HTTP status, a gRPC
  status, or a body cut off mid-chunk (the HTTP client raises);
- `truncated`: a body that ended cleanly without an end event — a silent truncation,
  which must never happen.

It prints, per kill: the streams that started around it and how they ended, the streams
the killed router was serving at that moment (its `sluice_router_streams_in_flight`),
and the seconds from the kill until the replica was SERVING again and back in use.
docs/runtime.md, "Replicas", gives the figures.

    python -m loadtest.replica_kill                 # 30 streams/s, kills 3 s apart
    python -m loadtest.replica_kill --rate 50 --gap 6
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess  # nosec B404 - we start our own `sluice up`
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtest.soak import free_ports
from sluice.common.v1 import common_pb2
from sluice.router.v1 import router_pb2, router_pb2_grpc

AUTH = {"authorization": "Bearer sk-sluice-dev"}
KINDS = ("sse", "grpc", "openai")
HEALTH = {
    "router": "sluice.router.v1.RouterService",
    "limiter": "sluice.limiter.v1.LimiterService",
    "provider": "sluice.provider.v1.ProviderService",
}
TIMEOUT_S = 30.0


@dataclass(slots=True)
class Stream:
    """One request and how it ended."""

    kind: str
    started: float
    ended: float = 0.0
    outcome: str = ""
    """complete, error (visible to the client) or truncated (ended silently)."""
    detail: str = ""


@dataclass
class Load:
    """The streams sent so far."""

    streams: list[Stream] = field(default_factory=list)
    stop: bool = False

    def started_between(self, start: float, end: float) -> list[Stream]:
        """Streams that started within [start, end)."""
        return [s for s in self.streams if start <= s.started < end]


def sse_outcome(lines: list[str]) -> tuple[str, str]:
    """How a transcoded SSE stream ended, from its `data:` lines."""
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    if events and "complete" in events[-1]:
        return "complete", ""
    if events and "error" in events[-1]:
        return "error", str(events[-1]["error"].get("reason", "error event"))
    return "truncated", f"{len(events)} events, no end event"


def openai_outcome(lines: list[str]) -> tuple[str, str]:
    """How an OpenAI-compatible stream ended: `finish_reason` then `[DONE]`, or an
    in-band `error` chunk."""
    data = [line[6:] for line in lines if line.startswith("data: ")]
    chunks = [json.loads(item) for item in data if item != "[DONE]"]
    if any("error" in chunk for chunk in chunks):
        return "error", "error chunk"
    finished = any(c.get("choices") and c["choices"][0].get("finish_reason") for c in chunks)
    if data and data[-1] == "[DONE]" and finished:
        return "complete", ""
    return "truncated", f"{len(data)} chunks, no [DONE]"


async def _http(client: httpx.AsyncClient, kind: str, index: int) -> tuple[str, str]:
    messages = [{"role": "user", "content": f"replica kill {kind} {index}"}]
    body: dict[str, Any] = {"model": "default", "messages": messages, "max_tokens": 16}
    path = "/v1/generate"
    if kind == "openai":
        path, body["stream"] = "/v1/chat/completions", True
    async with client.stream("POST", path, json=body, headers=AUTH) as response:
        if response.status_code != 200:
            await response.aread()
            return "error", f"HTTP {response.status_code}"
        lines = [line async for line in response.aiter_lines()]
    return sse_outcome(lines) if kind == "sse" else openai_outcome(lines)


async def _grpc(stub: router_pb2_grpc.RouterServiceStub, index: int) -> tuple[str, str]:
    request = router_pb2.GenerateRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content=f"replica kill grpc {index}")],
        max_tokens=16,
    )
    last = None
    async for event in stub.Generate(request, metadata=list(AUTH.items()), timeout=TIMEOUT_S):
        last = event
    kind = last.WhichOneof("event") if last is not None else None
    if kind == "complete":
        return "complete", ""
    if kind == "error" and last is not None:
        return "error", last.error.reason
    return "truncated", f"last event {kind}"


async def one(
    load: Load,
    kind: str,
    index: int,
    client: httpx.AsyncClient,
    stub: router_pb2_grpc.RouterServiceStub,
) -> None:
    stream = Stream(kind, time.monotonic())
    load.streams.append(stream)
    try:
        if kind == "grpc":
            stream.outcome, stream.detail = await _grpc(stub, index)
        else:
            stream.outcome, stream.detail = await _http(client, kind, index)
    except grpc.aio.AioRpcError as err:
        stream.outcome, stream.detail = "error", f"gRPC {err.code().name}"
    except httpx.HTTPError as err:
        # A body cut off mid-chunk, a reset connection: the client raises, so it sees it.
        stream.outcome, stream.detail = "error", type(err).__name__
    finally:
        stream.ended = time.monotonic()


async def steady(load: Load, edge: str, rate: float) -> None:
    """Start `rate` streams a second (open loop: a slow stream does not slow the rate)
    until `load.stop`; then wait for those in flight."""
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
    async with (
        httpx.AsyncClient(
            base_url=edge, trust_env=False, timeout=TIMEOUT_S, limits=limits
        ) as client,
        grpc.aio.insecure_channel(edge.removeprefix("http://")) as channel,
    ):
        stub = router_pb2_grpc.RouterServiceStub(channel)
        origin = time.monotonic()
        index = 0
        while not load.stop:
            task = asyncio.create_task(one(load, KINDS[index % len(KINDS)], index, client, stub))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
            await asyncio.sleep(max(0.0, origin + index / rate - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT_S + 5)


def tally(streams: list[Stream]) -> dict[str, Any]:
    """Counts by outcome, and the failures' details."""
    counts = {"requests": len(streams), "complete": 0, "error": 0, "truncated": 0}
    for stream in streams:
        counts[stream.outcome or "unfinished"] = counts.get(stream.outcome or "unfinished", 0) + 1
    failures: dict[str, int] = {}
    for stream in streams:
        if stream.outcome != "complete":
            key = f"{stream.kind}: {stream.detail}"
            failures[key] = failures.get(key, 0) + 1
    return {**counts, "failures": failures}


async def grpc_serving(address: str, service: str) -> bool:
    """Whether address answers SERVING for service (plaintext, as the suite runs here)."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=0.5
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def in_flight(metrics_url: str) -> float:
    """A router's `sluice_router_streams_in_flight` right now."""
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        text = (await client.get(metrics_url)).text
    for line in text.splitlines():
        if line.startswith("sluice_router_streams_in_flight "):
            return float(line.rsplit(" ", 1)[1])
    raise RuntimeError(f"no sluice_router_streams_in_flight at {metrics_url}")


@dataclass
class Kill:
    """One kill -9 and what followed."""

    part: str
    pid: int
    killed_at: float
    back_s: float | None = None
    """Seconds from the kill until a new process served (None until then)."""
    victim_in_flight: float | None = None
    """The killed router's streams in flight just before the kill (routers only)."""
    started_since_reading: int = 0
    """Streams started between that reading and the kill."""


async def kill(load: Load, run_dir: Path, part: str, metrics_url: str | None = None) -> Kill:
    """SIGKILL the part (its pid from `<run_dir>/<part>.pid`); a router's metrics_url is
    read just before, for the streams it held."""
    victim = int((run_dir / f"{part}.pid").read_text())
    read_at = time.monotonic()
    gauge = await in_flight(metrics_url) if metrics_url is not None else None
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    started = len(load.started_between(read_at, killed_at))
    return Kill(part, victim, killed_at, victim_in_flight=gauge, started_since_reading=started)


async def wait_back(
    kill: Kill, run_dir: Path, back: Callable[[], Awaitable[bool]], timeout_s: float = 45.0
) -> Kill:
    """Wait until a new process of the killed part runs and `back()` holds."""
    pid_file = run_dir / f"{kill.part}.pid"
    while time.monotonic() < kill.killed_at + timeout_s:
        with contextlib.suppress(OSError, ValueError):
            if int(pid_file.read_text()) != kill.pid and await back():
                kill.back_s = time.monotonic() - kill.killed_at
                return kill
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{kill.part} not back within {timeout_s:g} s of its kill")


def by_kill(load: Load, kills: list[Kill]) -> dict[str, dict[str, Any]]:
    """Per kill, the streams that ended after it and no later than the next kill (a
    stream a kill breaks ends at once), with how long the part took to come back."""
    figures = {}
    origin = load.streams[0].started if load.streams else 0.0
    for index, victim in enumerate(kills):
        end = kills[index + 1].killed_at if index + 1 < len(kills) else float("inf")
        ended = [s for s in load.streams if victim.killed_at < s.ended <= end]
        figures[victim.part] = {
            "killed_at_s": round(victim.killed_at - origin, 2),
            "back_serving_s": None if victim.back_s is None else round(victim.back_s, 2),
            **tally(ended),
        }
        if victim.victim_in_flight is not None:
            figures[victim.part]["victim_streams_in_flight"] = victim.victim_in_flight
            figures[victim.part]["started_since_reading"] = victim.started_since_reading
    return figures


# -- standalone run --------------------------------------------------------------------

PORTS = (
    "router", "router_metrics", "router_http", "router2", "router2_metrics", "router2_http",
    "limiter", "limiter_metrics", "limiter2", "limiter2_metrics", "provider", "provider_metrics",
    "provider2", "provider2_metrics", "telemetry", "telemetry_metrics", "envoy", "envoy_admin",
    "supervisor",
)  # fmt: skip


def replica_config(ports: dict[str, int]) -> dict[str, Any]:
    """Two routers, limiters and providers on free ports; answers of about a second."""
    backend = {"time_to_first_token_ms": 50, "tokens_per_second": 20, "answer_tokens": 16}

    def server(part: str) -> dict[str, int]:
        return {"port": ports[part], "metrics_port": ports[f"{part}_metrics"]}

    return {
        "tracing": {"endpoint": f"127.0.0.1:{ports['telemetry']}", "sample_ratio": 0.01},
        "router": {
            "server": server("router"),
            "http_api": {"port": ports["router_http"]},
            "limiter_address": f"127.0.0.1:{ports['limiter']}",
            "provider_address": f"127.0.0.1:{ports['provider']}",
        },
        "limiter": {"server": server("limiter")},
        "provider": {"server": server("provider"), "backends": {"simulated": backend}},
        "telemetry": {"server": server("telemetry")},
        "envoy": {
            "port": ports["envoy"],
            "admin_port": ports["envoy_admin"],
            "health_check_interval_ms": 500,
            "drain_time_s": 1,
        },
        "supervisor": {
            "metrics_port": ports["supervisor"],
            "replicas": {"router": 2, "limiter": 2, "provider": 2},
            "replica_ports": {
                "router": [{**server("router2"), "http_port": ports["router2_http"]}],
                "limiter": [server("limiter2")],
                "provider": [server("provider2")],
            },
        },
    }


@contextlib.contextmanager
def running_suite(workdir: Path) -> Iterator[tuple[dict[str, int], Path, str]]:
    """`sluice up` on free ports; yields (ports, run dir, banner)."""
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    config = workdir / "replicas.yaml"
    config.write_text(yaml.safe_dump(replica_config(ports)))
    run_dir = workdir / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    sluice = str(Path(sys.executable).parent / "sluice")
    log = (workdir / "sluice-up.log").open("w")
    process = subprocess.Popen(  # noqa: S603  # nosec B603
        [sluice, "up", "--config", str(config), "--run-dir", str(run_dir),
         "--log-dir", str(workdir / "logs")],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )  # fmt: skip
    banner = []
    try:
        if process.stdout is None:
            raise RuntimeError("no stdout from sluice up")
        for line in process.stdout:
            banner.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        else:
            raise RuntimeError(f"sluice up exited during start-up; see {workdir}")
        yield ports, run_dir, "".join(banner)
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


async def envoy_uses(admin: str, host_port: str) -> bool:
    """Whether Envoy's router cluster counts host:port healthy."""
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        text = (await client.get(f"{admin}/clusters")).text
    return f"router::{host_port}::health_flags::healthy" in text


async def run(
    ports: dict[str, int], run_dir: Path, rate: float, settle_s: float, gap_s: float
) -> dict[str, Any]:
    """The steady load; a provider, a limiter and a router killed `gap_s` apart; the
    load kept on until all three are back and `settle_s` longer. Returns the figures."""
    load = Load()
    edge = f"http://127.0.0.1:{ports['envoy']}"
    admin = f"http://127.0.0.1:{ports['envoy_admin']}"
    sender = asyncio.create_task(steady(load, edge, rate))
    await asyncio.sleep(settle_s)
    waiting = []
    for part, key in (("provider", "provider"), ("limiter-2", "limiter2"), ("router-2", "router2")):
        address = f"127.0.0.1:{ports[key]}"
        role = part.split("-")[0]

        async def back(address: str = address, role: str = role) -> bool:
            serving = await grpc_serving(address, HEALTH[role])
            return serving and (role != "router" or await envoy_uses(admin, address))

        metrics = f"http://127.0.0.1:{ports[key + '_metrics']}/metrics"
        victim = await kill(load, run_dir, part, metrics if role == "router" else None)
        waiting.append(asyncio.create_task(wait_back(victim, run_dir, back)))
        await asyncio.sleep(gap_s)
    kills = list(await asyncio.gather(*waiting))
    all_back = time.monotonic()
    await asyncio.sleep(settle_s)
    load.stop = True
    await sender
    return {
        "rate": rate,
        **by_kill(load, kills),
        "after_all_back": tally([s for s in load.streams if s.started >= all_back]),
        "all": tally(load.streams),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=30.0, help="new streams a second")
    parser.add_argument(
        "--settle", type=float, default=4.0, help="seconds of load before and after"
    )
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--keep", help="keep the suite's files (logs) in this directory")
    args = parser.parse_args(argv)
    if not 1 <= args.rate <= 200:
        parser.error("--rate must be within 1..200")
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(args.keep)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-kill-")))
        ports, run_dir, banner = stack.enter_context(running_suite(workdir))
        print(banner, flush=True)
        figures = asyncio.run(run(ports, run_dir, args.rate, args.settle, args.gap))
    print(json.dumps(figures, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
