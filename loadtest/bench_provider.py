"""The provider service alone over the fake OpenAI upstream vs calling the fake directly.

One run, same load (closed loop: `--concurrency` streams in flight for `--duration`
seconds per phase): phase "direct" streams Chat Completions from the fake with httpx
(parsing the SSE as a client must); phase "provider" streams the same answers through
`sluice.provider.v1.ProviderService/Stream` on a provider process whose back end is that
fake. Printed: streams/s, stream latency, time to first token and per-token latency of
each phase, what the provider adds, the throughput ratio, and the CPU the provider
process used.

    python loadtest/bench_provider.py [--concurrency 32] [--duration 5] [--answer-tokens 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from httpx_sse import aconnect_sse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.tls import channel as suite_channel
from loadtest.tls import ensure_certs
from sluice.common.v1 import common_pb2
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROMPT = "Explain in a few words how a sluice gate keeps a canal level."


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    elapsed: float = 0.0
    totals: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    per_token: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0

    def record(self, started: float, first: float, ended: float, tokens: int) -> None:
        self.totals.append(ended - started)
        self.ttfts.append(first - started)
        if tokens > 1:
            self.per_token.append((ended - first) / (tokens - 1))
        self.tokens += tokens

    @property
    def rate(self) -> float:
        return len(self.totals) / self.elapsed if self.elapsed else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def closed_loop(
    phase: Phase,
    one: Callable[[], Awaitable[tuple[float, float, float, int]]],
    concurrency: int,
    duration: float,
) -> None:
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            try:
                phase.record(*await one())
            except Exception:  # counted, not fatal: the figures say how many failed
                phase.errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.elapsed = time.perf_counter() - started


async def run(args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fake = subprocess.Popen(  # noqa: S603, ASYNC220 - our own fake, before any load
        [
            sys.executable,
            "-m",
            "tests.fakes",
            "openai",
            "--answer-tokens",
            str(args.answer_tokens),
            "--tokens-per-second",
            str(args.tokens_per_second),
            "--ttft-ms",
            str(args.ttft_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    provider: subprocess.Popen[bytes] | None = None
    certs_dir = Path(tempfile.mkdtemp(prefix="sluice-bench-certs-"))
    try:
        assert fake.stdout is not None
        fake_port = int(fake.stdout.readline().split()[1])
        base_url = f"http://127.0.0.1:{fake_port}/v1"
        provider_port = free_port()
        # The provider as the suite runs it: mutual TLS, answering the router's identity.
        certs = ensure_certs(certs_dir)
        config = {
            "security": {"certs_dir": str(certs)},
            "provider": {
                "log_level": "WARNING",
                "server": {"host": "127.0.0.1", "port": provider_port, "metrics_port": 0},
                "tracing": {"enabled": False},
                "backends": {
                    "oa": {
                        "kind": "openai",
                        "base_url": base_url,
                        "model": "gpt-4o-mini",
                        "max_connections": args.concurrency * 2,
                    },
                },
            },
        }
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            yaml.safe_dump(config, handle)
        provider = subprocess.Popen(  # noqa: ASYNC220 - our own service
            [sys.executable, "-m", "sluice.provider"],
            env={**env, "SLUICE_CONFIG": handle.name},
            cwd=ROOT,
        )
        channel = suite_channel(f"127.0.0.1:{provider_port}", certs, "provider", "router")
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
        stub = provider_pb2_grpc.ProviderServiceStub(channel)
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": args.answer_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        limits = httpx.Limits(max_connections=args.concurrency * 2)
        client = httpx.AsyncClient(trust_env=False, limits=limits, timeout=30.0)

        async def direct() -> tuple[float, float, float, int]:
            started = time.perf_counter()
            first, tokens = 0.0, 0
            async with aconnect_sse(
                client, "POST", f"{base_url}/chat/completions", json=body
            ) as source:
                async for event in source.aiter_sse():
                    if event.data == "[DONE]":
                        break
                    chunk = json.loads(event.data)
                    for choice in chunk["choices"]:
                        if choice["delta"].get("content"):
                            tokens += 1
                            first = first or time.perf_counter()
            return started, first, time.perf_counter(), tokens

        request = provider_pb2.StreamRequest(
            backend="oa",
            messages=[common_pb2.Message(role="user", content=PROMPT)],
            max_tokens=args.answer_tokens,
        )

        async def through_provider() -> tuple[float, float, float, int]:
            started = time.perf_counter()
            first, tokens = 0.0, 0
            async for event in stub.Stream(request, timeout=30.0):
                if event.HasField("delta"):
                    tokens += event.delta.token_count  # deltas that arrive together coalesce
                    first = first or time.perf_counter()
            return started, first, time.perf_counter(), tokens

        # Warm both paths (connections, imports) before measuring.
        await closed_loop(Phase("warm"), direct, args.concurrency, 0.5)
        await closed_loop(Phase("warm"), through_provider, args.concurrency, 0.5)
        phases = [Phase("direct"), Phase("provider")]
        cpu_before = cpu_seconds(provider.pid)
        fake_before = cpu_seconds(fake.pid)
        await closed_loop(phases[0], direct, args.concurrency, args.duration)
        fake_direct = cpu_seconds(fake.pid) - fake_before
        cpu_mid = cpu_seconds(provider.pid)
        await closed_loop(phases[1], through_provider, args.concurrency, args.duration)
        provider_cpu = cpu_seconds(provider.pid) - cpu_mid
        await client.aclose()
        await channel.close()
        report(args, phases, provider_cpu, cpu_mid - cpu_before, fake_direct)
    finally:
        shutil.rmtree(certs_dir, ignore_errors=True)
        for process in (provider, fake):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


def report(
    args: argparse.Namespace,
    phases: list[Phase],
    provider_cpu: float,
    idle_cpu: float,
    fake_cpu: float,
) -> None:
    direct, via = phases
    print(
        f"provider bench: concurrency {args.concurrency}, {args.duration:g} s per phase, "
        f"{args.answer_tokens} tokens per answer, upstream pace "
        f"{args.tokens_per_second or 'unpaced'} tok/s, ttft {args.ttft_ms:g} ms"
    )
    print(
        f"{'phase':<9} {'streams/s':>10} {'tokens/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'ttft p50':>9} {'per-token us':>13} {'errors':>7}"
    )
    for p in phases:
        print(
            f"{p.name:<9} {p.rate:>10.1f} {p.tokens / p.elapsed:>10.0f} "
            f"{pct(p.totals, 0.5) * 1e3:>8.2f} {pct(p.totals, 0.99) * 1e3:>8.2f} "
            f"{pct(p.ttfts, 0.5) * 1e3:>9.2f} "
            f"{statistics.fmean(p.per_token) * 1e6 if p.per_token else 0:>13.1f} {p.errors:>7}"
        )
    added_stream = statistics.fmean(via.totals) - statistics.fmean(direct.totals)
    added_ttft = statistics.fmean(via.ttfts) - statistics.fmean(direct.ttfts)
    added_token = statistics.fmean(via.per_token) - statistics.fmean(direct.per_token)
    print(
        f"added by the provider: {added_stream * 1e3:+.2f} ms per stream (mean), "
        f"{added_ttft * 1e3:+.2f} ms to first token, {added_token * 1e6:+.1f} us per token"
    )
    print(f"throughput ratio provider/direct: {via.rate / direct.rate:.3f}")
    print(
        f"provider CPU: {provider_cpu / args.duration * 100:.0f}% of one core while loaded "
        f"({provider_cpu / max(len(via.totals), 1) * 1e3:.2f} ms per stream); "
        f"fake upstream CPU in the direct phase {fake_cpu / args.duration * 100:.0f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--answer-tokens", type=int, default=50)
    parser.add_argument("--tokens-per-second", type=float, default=0.0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
