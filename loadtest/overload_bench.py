"""Overload: offered load 5x what the back end can serve, mixed classes, two tenants.

Starts a private suite (`sluice up`, free loopback ports) whose single model runs on a
paced simulated back end behind the router's admission gate, with the concurrency
fixed at --slots (so capacity is a known, measured number), then:

1. calibration: a closed loop keeps every slot busy; completions/s = capacity;
2. overload: open-loop Poisson arrivals at --factor x capacity for --duration s, from
   two tenants (`heavy` sends 10x what `light` sends), classes premium 10%, critical 10%,
   normal 40%, background 40%, each with a --deadline.

Prints goodput as a share of capacity, p50/p99 time to first token and outcome counts
per class, and the fairness ratio between the tenants (each tenant's goodput over its
max-min fair share of capacity; 1.0 = got its fair share).

    python loadtest/overload_bench.py [--slots 8] [--factor 5] [--duration 8] [--json out]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.bench import RunningSuite, suite_config
from loadtest.tls import channel as suite_channel
from sluice.common.v1 import common_pb2
from sluice.router.v1 import router_pb2, router_pb2_grpc

CLASSES = ("premium", "critical", "normal", "background")
CLASS_MIX = (0.1, 0.1, 0.4, 0.4)
TENANTS = ("heavy", "light")
TENANT_MIX = (10 / 11, 1 / 11)
BACKEND = {
    # ~40 ms to the first token, then 20 tokens at 200/s: ~140 ms of back-end time.
    "time_to_first_token_ms": 40,
    "tokens_per_second": 200,
    "min_tick_ms": 5,
    "answer_tokens": 40,
}
MAX_TOKENS = 20


def key_of(tenant: str, klass: str) -> str:
    return f"sk-{tenant}-{klass}"


def config(slots: int) -> dict[str, Any]:
    base = suite_config(tracing_ratio=0.0)
    base["provider"]["backends"] = {"paced": BACKEND}
    router = base["router"]
    router["models"] = {"overload": {"backends": [{"backend": "paced"}]}}
    router["api_keys"] = [
        {
            "id": f"{tenant}-{klass}",
            "sha256": hashlib.sha256(key_of(tenant, klass).encode()).hexdigest(),
            "tenant": tenant,
            "tier": klass,
        }
        for tenant in TENANTS
        for klass in CLASSES
    ]
    router["admission"] = {
        "max_queue": 100_000,
        "adaptive": {"initial_limit": slots, "min_limit": slots, "max_limit": slots},
    }
    # The admission gate is the capacity; the bulkhead stays a (looser) guard behind it.
    router["resilience"] = {"bulkhead": {"max_concurrent": slots * 4}}
    base["envoy"]["enabled"] = False
    return base


@dataclass
class Outcome:
    tenant: str
    klass: str
    code: str
    ttft_s: float | None
    finished_at: float


async def one(
    stub: router_pb2_grpc.RouterServiceStub, tenant: str, klass: str, deadline_s: float
) -> Outcome:
    request = router_pb2.GenerateRequest(
        model="overload",
        messages=[common_pb2.Message(role="user", content="overload")],
        max_tokens=MAX_TOKENS,
    )
    started = time.perf_counter()
    ttft: float | None = None
    code = "OK"
    try:
        call = stub.Generate(
            request, metadata=[("x-api-key", key_of(tenant, klass))], timeout=deadline_s
        )
        async for event in call:
            if ttft is None and event.WhichOneof("event") == "data":
                ttft = time.perf_counter() - started
    except grpc.aio.AioRpcError as err:
        code = err.code().name
    return Outcome(tenant, klass, code, ttft, time.perf_counter())


async def calibrate(stub: router_pb2_grpc.RouterServiceStub, slots: int, seconds: float) -> float:
    """Completions per second with every slot busy (closed loop, 4x slots clients)."""
    stop = time.perf_counter() + seconds
    done = 0

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            result = await one(stub, "light", "normal", 30.0)
            if result.code == "OK":
                done += 1

    warm = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(slots * 4)))
    return done / (time.perf_counter() - warm)


async def overload(
    stub: router_pb2_grpc.RouterServiceStub, rate: float, seconds: float, deadline_s: float
) -> tuple[list[Outcome], float]:
    rng = random.Random(7)
    tasks: list[asyncio.Task[Outcome]] = []
    began = time.perf_counter()
    next_at = began
    while next_at < began + seconds:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tenant = rng.choices(TENANTS, TENANT_MIX)[0]
        klass = rng.choices(CLASSES, CLASS_MIX)[0]
        tasks.append(asyncio.create_task(one(stub, tenant, klass, deadline_s)))
        next_at += rng.expovariate(rate)
    results = await asyncio.gather(*tasks)
    return list(results), began


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def figures(
    outcomes: list[Outcome], began: float, seconds: float, capacity: float
) -> dict[str, Any]:
    window = [o for o in outcomes if o.finished_at - began <= seconds + 5.0]
    ok = [o for o in window if o.code == "OK"]
    goodput = len(ok) / seconds
    per_class: dict[str, Any] = {}
    for klass in CLASSES:
        mine = [o for o in window if o.klass == klass]
        ttfts = [o.ttft_s for o in mine if o.code == "OK" and o.ttft_s is not None]
        p50, p99 = quantile(ttfts, 0.5), quantile(ttfts, 0.99)
        per_class[klass] = {
            "offered": len(mine),
            "served": sum(1 for o in mine if o.code == "OK"),
            "ttft_p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "ttft_p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
            "outcomes": dict(Counter(o.code for o in mine)),
        }
    offered = {t: sum(1 for o in window if o.tenant == t) / seconds for t in TENANTS}
    served = {t: sum(1 for o in ok if o.tenant == t) / seconds for t in TENANTS}
    satisfaction = _satisfaction(offered, served, goodput)
    # The policy is class first, fairness within a class: the ratio per class says
    # whether tenants shared what each class got.
    within: dict[str, float | None] = {}
    for klass in CLASSES:
        mine = [o for o in window if o.klass == klass]
        class_ok = [o for o in mine if o.code == "OK"]
        if not class_ok:
            within[klass] = None
            continue
        offered_k = {t: sum(1 for o in mine if o.tenant == t) / seconds for t in TENANTS}
        served_k = {t: sum(1 for o in class_ok if o.tenant == t) / seconds for t in TENANTS}
        ratio = _satisfaction(offered_k, served_k, len(class_ok) / seconds)
        within[klass] = round(ratio["light"] / ratio["heavy"], 3) if ratio["heavy"] else None
    return {
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(len(window) / seconds, 1),
        "goodput_rps": round(goodput, 1),
        "goodput_share_of_capacity": round(goodput / capacity, 3),
        "per_class": per_class,
        "per_tenant": {
            t: {
                "offered_rps": round(offered[t], 1),
                "served_rps": round(served[t], 1),
                "fair_share_rps": round(_fair(offered, goodput)[t], 1),
                "share_of_fair": round(satisfaction[t], 3),
            }
            for t in TENANTS
        },
        "fairness_ratio_light_vs_heavy": round(
            satisfaction["light"] / satisfaction["heavy"] if satisfaction["heavy"] else 0.0, 3
        ),
        "fairness_ratio_within_class": within,
    }


def _fair(offered: dict[str, float], goodput: float) -> dict[str, float]:
    """Max-min fair shares of the goodput actually delivered."""
    fair: dict[str, float] = {}
    left, waiting = goodput, sorted(offered, key=lambda t: offered[t])
    while waiting:
        share = left / len(waiting)
        tenant = waiting.pop(0)
        fair[tenant] = min(offered[tenant], share)
        left -= fair[tenant]
    return fair


def _satisfaction(
    offered: dict[str, float], served: dict[str, float], goodput: float
) -> dict[str, float]:
    """Each tenant's served rate over its max-min fair share (1.0 = got its share)."""
    fair = _fair(offered, goodput)
    return {t: served[t] / fair[t] if fair[t] else 1.0 for t in offered}


async def run(args: argparse.Namespace, address: str, certs: Path | None) -> dict[str, Any]:
    async with suite_channel(address, certs, "router") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        await one(stub, "light", "normal", 10.0)  # warm up
        capacity = await calibrate(stub, args.slots, args.calibrate)
        outcomes, began = await overload(stub, capacity * args.factor, args.duration, args.deadline)
    return figures(outcomes, began, args.duration, capacity)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--factor", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--calibrate", type=float, default=4.0)
    parser.add_argument("--deadline", type=float, default=2.0, help="per-request deadline, s")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sluice-overload-") as tmp:
        workdir = Path(tmp)
        settings = config(args.slots)
        path = workdir / "sluice.yaml"
        path.write_text(yaml.safe_dump(settings))
        with RunningSuite(path, workdir, None) as suite:
            result = asyncio.run(run(args, suite.address(settings, "router"), suite.certs))
    result["settings"] = {
        "slots": args.slots,
        "factor": args.factor,
        "duration_s": args.duration,
        "deadline_s": args.deadline,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
