"""The Redis backend on a real valkey-server: Lua mirrors Python, replicas share one
limit exactly, and an unreachable store degrades to each replica's share and recovers."""

from __future__ import annotations

import asyncio
import functools
import operator
import random

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.common.v1 import common_pb2
from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.algorithms import (
    Algorithm,
    FixedWindow,
    LeaseAsk,
    SlidingCounter,
    SlidingLog,
    TokenBucket,
)
from sluice.limiter.memory import MemoryBackend
from sluice.limiter.policies import Check
from sluice.limiter.redis import RedisBackend
from sluice.limiter.service import LIMITER_SERVICE, STORE_HEALTH, build_server
from sluice.limiter.settings import RedisSettings
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc
from sluice.provider.service import build_server as build_provider
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.wiring import build_server as build_router
from tests.support import (
    AUTH,
    FakeClock,
    RedisProcess,
    ServiceStack,
    collect,
    error_info,
    eventually,
    limiter_settings,
    metric,
    provider_settings,
    router_settings,
    start_suite,
)


def same_time_clock() -> FakeClock:
    # Memory reads monotonic(), Redis wall(): make them one clock for a bit-exact comparison.
    return FakeClock(monotonic=1_000.0, wall=1_000.0)


def token_check(key: str, algorithm: Algorithm, cost: float, unit: str = "tokens") -> Check:
    return Check(key, f"api_key:{key}", key, unit, algorithm, cost)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "algorithm",
    [TokenBucket(20, 7), FixedWindow(20, 1.5), SlidingLog(20, 1.5), SlidingCounter(20, 1.5)],
    ids=lambda a: a.name,
)
async def test_lua_decides_exactly_as_the_python_algorithms(
    redis_server: RedisProcess, algorithm: Algorithm
) -> None:
    clock = same_time_clock()
    memory = MemoryBackend(clock)
    shared = RedisBackend(RedisSettings(url=redis_server.url), clock=clock)
    rng = random.Random(f"{algorithm.name}-5")
    try:
        for step in range(300):
            clock.advance(rng.choice([0.0, 0.001, 0.05, 0.2, 0.7]))
            cost = float(rng.randint(0, 8))
            checks = [token_check("k", algorithm, cost)]
            expected = await memory.acquire(checks, f"r{step}")
            got = await shared.acquire(checks, f"r{step}")
            assert got == expected, (step, cost)
            if expected.allowed and rng.random() < 0.5:
                actual = float(rng.randint(0, 12))
                assert await shared.reconcile(f"r{step}", actual) == await memory.reconcile(
                    f"r{step}", actual
                )
    finally:
        await shared.close()


async def test_state_keys_expire_and_a_refusal_writes_nothing(redis_server: RedisProcess) -> None:
    shared = RedisBackend(RedisSettings(url=redis_server.url, key_prefix="t:"))
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        roomy, tight = TokenBucket(100, 10), FixedWindow(1, 60)
        first = [token_check("a", roomy, 5), token_check("b", tight, 1, "requests")]
        assert (await shared.acquire(first, "r1")).allowed
        before = {key: await client.get(key) for key in ("t:a", "t:b")}

        refused = await shared.acquire(first, "r2")

        assert not refused.allowed
        assert [v.allowed for v in refused.verdicts] == [True, False]
        assert {key: await client.get(key) for key in ("t:a", "t:b")} == before
        assert 0 < await client.pttl("t:a") <= 11_000  # refill time + 1 s
        assert 0 < await client.pttl("t:b") <= 61_000
        assert 0 < await client.pttl("t:res|r1") <= 3_600_000
        assert await client.exists("t:res|r2") == 0
    finally:
        await shared.close()
        await client.aclose()


async def start_replicas(
    stack: ServiceStack, count: int, **fields: object
) -> list[limiter_pb2_grpc.LimiterServiceStub]:
    hosts: list[ServiceHost] = []
    for _ in range(count):
        hosts.append(await stack.start(build_server(limiter_settings(backend="redis", **fields))))
    return [limiter_pb2_grpc.LimiterServiceStub(stack.channel(h)) for h in hosts]


async def test_three_replicas_enforce_one_limit_with_no_overshoot(
    stack: ServiceStack, redis_server: RedisProcess
) -> None:
    replicas = await start_replicas(
        stack,
        3,
        # 300 decisions at once open ~100 connections per replica; on a busy 2-core host
        # a 0.25 s connect can time out, and the replica then rightly decides on its local
        # share (limiter/fallback.py), which is not what this test measures: the store's
        # own accuracy. A roomier timeout keeps the store in every decision.
        redis={"url": redis_server.url, "replicas": 3, "timeout_s": 5.0},
        policies=[
            {"name": "rpm", "limit": 60, "refill_per_second": 0.0001},
            {
                "name": "rph",
                "scope": "tenant",
                "algorithm": "sliding_log",
                "limit": 90,
                "window_s": 3600,
            },
            {"name": "tpm", "unit": "tokens", "limit": 20_000, "refill_per_second": 0.0001},
        ],
    )
    rng = random.Random(7)
    costs = [rng.randint(100, 900) for _ in range(300)]

    async def one(index: int) -> tuple[str, int]:
        request = limiter_pb2.AcquireRequest(
            api_key_id=f"k{index % 2}", tenant="acme", requests=1, tokens=costs[index]
        )
        try:
            await replicas[index % 3].Acquire(request)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return error_info(err).metadata["policy"], 0
        return f"k{index % 2}", costs[index]

    results = await asyncio.gather(*(one(i) for i in range(300)))

    admitted = [(who, tokens) for who, tokens in results if tokens]
    per_key = {key: [t for who, t in admitted if who == key] for key in ("k0", "k1")}
    # Requests: each key's bucket of 60 and the tenant's 90 per hour, exactly.
    assert len(admitted) <= 90
    assert all(len(tokens) <= 60 for tokens in per_key.values())
    # Tokens: never more than 20 000 reserved per key.
    assert all(sum(tokens) <= 20_000 for tokens in per_key.values())
    # And not refused early: the binding limit was really reached.
    assert len(admitted) == 90 or any(sum(t) > 20_000 - 900 for t in per_key.values())


async def test_reconcile_on_another_replica_refunds_the_shared_limit(
    stack: ServiceStack, redis_server: RedisProcess
) -> None:
    first, second = await start_replicas(
        stack,
        2,
        redis={"url": redis_server.url, "replicas": 2},
        policies=[{"name": "tpm", "unit": "tokens", "limit": 1000, "refill_per_second": 0.0001}],
    )
    request = limiter_pb2.AcquireRequest(api_key_id="k", requests=1, tokens=900)
    granted = await first.Acquire(request)
    with pytest.raises(grpc.aio.AioRpcError):
        await second.Acquire(request)

    settled = await second.Reconcile(
        limiter_pb2.ReconcileRequest(reservation_id=granted.reservation_id, actual_tokens=150)
    )

    assert (settled.applied, settled.reserved_tokens, settled.delta_tokens) == (True, 900, -750)
    retaken = await first.Acquire(limiter_pb2.AcquireRequest(api_key_id="k", tokens=800))
    assert retaken.policies[0].remaining == 50  # 1000 - 150 really used - 800
    again = await first.Reconcile(
        limiter_pb2.ReconcileRequest(reservation_id=granted.reservation_id, actual_tokens=150)
    )
    assert not again.applied


async def test_unreachable_redis_falls_back_to_the_local_share_and_recovers(
    stack: ServiceStack, redis_server: RedisProcess
) -> None:
    clock = FakeClock()
    host = await stack.start(
        build_server(
            limiter_settings(
                backend="redis",
                redis={"url": redis_server.url, "replicas": 3, "retry_interval_s": 5},
                policies=[{"name": "rpm", "limit": 30, "refill_per_second": 0.0001}],
            ),
            clock=clock,
        )
    )
    limiter = limiter_pb2_grpc.LimiterServiceStub(stack.channel(host))
    request = limiter_pb2.AcquireRequest(api_key_id="k", requests=1)

    async def admitted(count: int) -> int:
        allowed = 0
        for _ in range(count):
            try:
                await limiter.Acquire(request)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            else:
                allowed += 1
        return allowed

    assert await admitted(5) == 5  # shared: 25 left in Redis
    assert await metric(host.metrics_port, "sluice_limiter_degraded") == 0
    redis_server.stop()

    # Redis gone: decided locally against a third of the limit (10), announced.
    assert await admitted(15) == 10
    assert await metric(host.metrics_port, "sluice_limiter_degraded") == 1
    assert await metric(host.metrics_port, "sluice_limiter_fallbacks_total") == 1

    redis_server.start()  # same port, empty
    assert await admitted(1) == 0  # the next try waits for retry_interval_s
    clock.advance(5)

    assert await admitted(40) == 30  # shared again: the restarted store's full limit
    assert await metric(host.metrics_port, "sluice_limiter_degraded") == 0
    assert await metric(host.metrics_port, "sluice_limiter_fallbacks_total") == 1


async def test_a_store_that_never_answers_still_decides_locally(stack: ServiceStack) -> None:
    host = await stack.start(
        build_server(
            limiter_settings(
                backend="redis",
                redis={"url": "redis://127.0.0.1:9/0", "replicas": 2, "timeout_s": 0.2},
                policies=[{"name": "rpm", "limit": 4, "refill_per_second": 0.0001}],
            ),
            clock=FakeClock(),
        )
    )
    limiter = limiter_pb2_grpc.LimiterServiceStub(stack.channel(host))
    outcomes = []
    for _ in range(3):
        try:
            await limiter.Acquire(limiter_pb2.AcquireRequest(api_key_id="k"))
        except grpc.aio.AioRpcError as err:
            outcomes.append(err.code())
        else:
            outcomes.append(grpc.StatusCode.OK)

    assert outcomes == [grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert await metric(host.metrics_port, "sluice_limiter_degraded") == 1


async def test_a_store_that_hangs_times_out_into_the_local_share(stack: ServiceStack) -> None:
    # Accepts connections, reads commands, never answers: only the timeout can save us.
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = FakeClock()
    try:
        host = await stack.start(
            build_server(
                limiter_settings(
                    backend="redis",
                    redis={"url": f"redis://127.0.0.1:{port}/0", "timeout_s": 0.1, "replicas": 4},
                    policies=[{"name": "rpm", "limit": 8, "refill_per_second": 0.0001}],
                ),
                clock=clock,
            )
        )
        limiter = limiter_pb2_grpc.LimiterServiceStub(stack.channel(host))
        first = await limiter.Acquire(limiter_pb2.AcquireRequest(api_key_id="k"), timeout=5)
        second = await limiter.Acquire(limiter_pb2.AcquireRequest(api_key_id="k"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await limiter.Acquire(limiter_pb2.AcquireRequest(api_key_id="k"), timeout=5)

        assert (first.limit, first.remaining, second.remaining) == (2, 1, 0)  # 8 / 4 replicas
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await metric(host.metrics_port, "sluice_limiter_degraded") == 1
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_store_health_announces_the_fallback_and_recovers_without_traffic(
    stack: ServiceStack, redis_server: RedisProcess
) -> None:
    host = await stack.start(
        build_server(
            limiter_settings(
                backend="redis",
                redis={"url": redis_server.url, "replicas": 2, "retry_interval_s": 0.1},
                policies=[{"name": "rpm", "limit": 100, "refill_per_second": 0.0001}],
            )
        )
    )
    channel = stack.channel(host)
    limiter = limiter_pb2_grpc.LimiterServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    request = limiter_pb2.AcquireRequest(api_key_id="k", requests=1)

    async def status(service: str) -> int:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        return int(reply.status)

    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert await status(STORE_HEALTH) == serving
    assert not (await limiter.Acquire(request)).local_fallback

    redis_server.stop()
    # Noticed by the background probe, without a decision having to fail first.
    assert await eventually(lambda: status(STORE_HEALTH), lambda s: s == not_serving) == not_serving
    assert await status("") == serving  # the limiter still decides
    assert await status(LIMITER_SERVICE) == serving
    granted = await limiter.Acquire(request)
    assert granted.local_fallback
    assert granted.limit == 50  # its half of the limit
    assert await metric(host.metrics_port, "sluice_limiter_degraded") == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Acquire(limiter_pb2.AcquireRequest(api_key_id="k", requests=51))
    assert error_info(caught.value).metadata["fallback"] == "local_share"

    redis_server.start()  # same port, empty; no traffic meanwhile
    assert await eventually(lambda: status(STORE_HEALTH), lambda s: s == serving) == serving
    assert await metric(host.metrics_port, "sluice_limiter_degraded") == 0
    shared = await limiter.Acquire(request)
    assert not shared.local_fallback
    assert shared.limit == 100


async def test_the_router_flags_streams_admitted_on_the_limiters_local_share(
    stack: ServiceStack,
) -> None:
    suite = await start_suite(
        stack,
        limiter={"backend": "redis", "redis": {"url": "redis://127.0.0.1:9/0", "timeout_s": 0.2}},
    )
    events = await collect(
        suite.router_stub.Generate(
            router_pb2.GenerateRequest(
                model="default", messages=[common_pb2.Message(role="user", content="hi")]
            ),
            metadata=AUTH,
        )
    )
    assert events[0].metadata.degradations == ["limiter_local_share"]
    assert events[-1].WhichOneof("event") == "complete"


async def test_budget_spend_is_shared_by_replicas_atomically_and_resets_each_period(
    redis_server: RedisProcess,
) -> None:
    clock = FakeClock(wall=1_700_000_000.0)  # 3600 s periods: this one has 2800 s left
    settings = RedisSettings(url=redis_server.url, key_prefix="b:", timeout_s=5.0)
    one = RedisBackend(settings, clock=clock)
    two = RedisBackend(settings, clock=clock)
    local = MemoryBackend(clock)
    try:
        assert (await one.spent("k", 3600)).amount == 0.0
        assert await one.spend("k", 3600, 1.5) == 1.5
        assert await two.spend("k", 3600, 2.0) == 3.5
        # Concurrent spends from both replicas: none lost (INCRBYFLOAT in one script).
        await asyncio.gather(
            *(replica.spend("k", 3600, 0.25) for _ in range(20) for replica in (one, two))
        )
        found = await two.spent("k", 3600)
        assert found.amount == pytest.approx(3.5 + 10.0)
        assert found.period_left_s == pytest.approx(2800.0)
        assert (await one.spent("other", 3600)).amount == 0.0
        # The in-memory backend keeps the same books (one replica).
        assert await local.spend("k", 3600, 1.5) == 1.5
        assert await local.spend("k", 3600, 2.0) == 3.5
        assert (await local.spent("k", 3600)).period_left_s == pytest.approx(2800.0)

        clock.advance(2800.0)  # the next period: nothing spent yet, in both
        assert (await one.spent("k", 3600)).amount == 0.0
        assert (await local.spent("k", 3600)).amount == 0.0
        assert (await one.spent("k", 3600)).period_left_s == pytest.approx(3600.0)
    finally:
        await one.close()
        await two.close()


async def test_two_routers_on_two_limiter_replicas_spend_one_budget(
    stack: ServiceStack, redis_server: RedisProcess
) -> None:
    # Every output token costs 1; the key may spend 5 per day. Each router sends its
    # streams' costs to its own limiter replica; both replicas keep spend in one Redis.
    budgets = {"prices": {"default": {"output_per_million": 1_000_000}}, "default": 5}
    limiters = [
        await stack.start(
            build_server(limiter_settings(backend="redis", redis={"url": redis_server.url}))
        )
        for _ in range(2)
    ]
    provider = await stack.start(build_provider(provider_settings()))
    routers = [
        await stack.start(build_router(router_settings(limiter, provider, budgets=budgets)))
        for limiter in limiters
    ]
    stubs = [router_pb2_grpc.RouterServiceStub(stack.channel(r)) for r in routers]
    small = router_pb2.GenerateRequest(
        model="default", messages=[common_pb2.Message(role="user", content="spend")], max_tokens=2
    )

    async def spent_total() -> float:
        return sum([await metric(m.metrics_port, "sluice_limiter_spend_total") for m in limiters])

    served = [0, 0]
    refusal: grpc.aio.AioRpcError | None = None
    for turn in range(10):
        index = turn % 2
        before = await spent_total()
        try:
            events = await collect(stubs[index].Generate(small, metadata=AUTH))
        except grpc.aio.AioRpcError as err:
            refusal = err
            break
        assert events[-1].WhichOneof("event") == "complete"
        served[index] += 1
        # The cost reaches the limiter just after the stream ends.
        await eventually(spent_total, functools.partial(operator.lt, before))

    assert refusal is not None, "the shared budget never ran out"
    assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refusal)
    assert info.reason == "BUSINESS_RULE_VIOLATION"
    assert info.metadata["budget"] == "5"
    total = await spent_total()
    assert total >= 5  # refused only once the combined spend reached the budget
    assert float(info.metadata["spent"]) == pytest.approx(total)
    # Each router alone spent less than the budget: per router it would still serve.
    for router in routers:
        assert await metric(router.metrics_port, "sluice_router_spend_total", model="default") < 5
    assert min(served) >= 1


# -- leases ----------------------------------------------------------------------------


async def test_lua_leases_exactly_as_the_python_algorithms(redis_server: RedisProcess) -> None:
    clock = same_time_clock()
    memory = MemoryBackend(clock)
    shared = RedisBackend(RedisSettings(url=redis_server.url, key_prefix=""), clock=clock)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    limits: list[Algorithm] = [TokenBucket(30, 7), FixedWindow(40, 1.5), SlidingCounter(50, 1.5)]
    rng = random.Random("leases-3")
    leases = 0
    try:
        for step in range(400):
            clock.advance(rng.choice([0.0, 0.001, 0.05, 0.2, 0.7]))
            cost = float(rng.randint(0, 4))
            chosen = rng.sample(range(3), rng.randint(1, 3))
            checks = [token_check(f"k{i}", limits[i], cost, "requests") for i in chosen]
            if 0 in chosen and rng.random() < 0.3:
                # A token cost on a leased bucket: reconcile adjusts a bucket with a pocket.
                checks.append(token_check("k0", limits[0], float(rng.randint(1, 5))))
            wanted = rng.choice([0, 0, 1, 5, 12])
            ask = (
                LeaseAsk(wanted, rng.choice([0.25, 1.0, 3.0]), rng.choice([0.0, 0.3, 0.5]))
                if wanted
                else None
            )
            expected = await memory.acquire(checks, f"r{step}", ask)
            got = await shared.acquire(checks, f"r{step}", ask)
            assert got == expected, (step, cost, ask)
            leases += expected.lease is not None
            if expected.allowed and rng.random() < 0.5:
                actual = float(rng.randint(0, 8))
                assert await shared.reconcile(f"r{step}", actual) == await memory.reconcile(
                    f"r{step}", actual
                )
        for key, state in memory._states.items():
            stored = await client.get(key)
            assert stored is not None
            assert [float(word) for word in stored.split()] == state, key
        assert leases > 50  # the comparison covered many grants
    finally:
        await shared.close()
        await client.aclose()


async def test_a_stored_two_element_bucket_still_decides_and_leases(
    redis_server: RedisProcess,
) -> None:
    clock = same_time_clock()
    shared = RedisBackend(RedisSettings(url=redis_server.url, key_prefix="old:"), clock=clock)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    memory = MemoryBackend(clock)
    bucket = TokenBucket(20, 2)
    try:
        # Written before leases: 3 tokens at 999 s (now is 1000 s: 5 tokens).
        await client.set("old:k", "3 999", px=60_000)
        memory._states["k"] = [3.0, 999.0]
        checks = [token_check("k", bucket, 1, "requests")]

        got = await shared.acquire(checks, "r1")

        assert got == await memory.acquire(checks, "r1")
        assert got.verdicts[0].remaining == 4
        assert await client.get("old:k") == "4 1000 0 0"
        await client.set("old:k", "15 999", px=60_000)
        memory._states["k"] = [15.0, 999.0]
        leased = await shared.acquire(checks, "r2", LeaseAsk(10, 1.0, 0.25))
        assert leased == await memory.acquire(checks, "r2", LeaseAsk(10, 1.0, 0.25))
        assert leased.lease is not None and leased.lease.requests == 10  # 20 - 17 - 5 >= 10
        assert await client.get("old:k") == "6 1000 10 1001"
    finally:
        await shared.close()
        await client.aclose()


async def test_a_bucket_key_outlives_the_permits_in_pockets(redis_server: RedisProcess) -> None:
    clock = same_time_clock()
    shared = RedisBackend(RedisSettings(url=redis_server.url, key_prefix="p:"), clock=clock)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    fast = TokenBucket(10, 100)  # full again after 0.1 s: its key lives 1.1 s untouched
    try:
        await shared.acquire([token_check("plain", fast, 1, "requests")], "r1")
        outcome = await shared.acquire(
            [token_check("leased", fast, 1, "requests")], "r2", LeaseAsk(4, 30.0, 0.0)
        )

        assert outcome.lease is not None and outcome.lease.ttl_s == 30.0
        assert 0 < await client.pttl("p:plain") <= 1_100
        # Forgetting the state while 4 permits are out would hand out a full bucket.
        assert 30_000 < await client.pttl("p:leased") <= 31_000
    finally:
        await shared.close()
        await client.aclose()


async def test_acquire_with_a_lease_over_grpc_on_redis(
    stack: ServiceStack, redis_server: RedisProcess
) -> None:
    (limiter,) = await start_replicas(
        stack,
        1,
        redis={"url": redis_server.url},
        policies=[{"name": "rpm", "limit": 1000, "refill_per_second": 0.0001}],
    )
    plain = await limiter.Acquire(limiter_pb2.AcquireRequest(api_key_id="k"))
    leased = await limiter.Acquire(limiter_pb2.AcquireRequest(api_key_id="k", lease_requests=10))

    assert (leased.lease.requests, leased.lease.ttl_ms) == (10, 1000)
    assert plain.remaining - leased.remaining == 11
    assert not plain.HasField("lease")


Pocket = tuple[int, float]
"""(permits left, moment they lapse)."""


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_counter", "token_bucket"])
async def test_three_replicas_with_leases_never_admit_more_than_the_limit(
    stack: ServiceStack, redis_server: RedisProcess, algorithm: str
) -> None:
    # Six callers on three replicas share one limit of 40 (per 8 s window, or a bucket of
    # 40 refilled at 2/s); each takes leases of up to 6 for 3 s and admits locally from
    # its pocket until the lease's ttl runs out. Every admission counts at its moment of
    # USE. The first window is quiet: one caller, two requests, the last one late in
    # the window; its lease would be used in the next window without the clamp, and the
    # bucket would refill to full with permits still in the pocket without the cap. Then
    # all six burst (twelve attempts each per half second) and use every permit at once.
    limit, window, rate = 40, 8.0, 2.0
    clock = FakeClock(monotonic=1_000.0, wall=1_700_000_000.0)  # a window boundary
    start = clock.wall()
    policy: dict[str, object] = {"name": "rpw", "algorithm": algorithm, "limit": limit}
    policy.update({"refill_per_second": rate} if algorithm == "token_bucket" else {})
    policy.update({} if algorithm == "token_bucket" else {"window_s": window})
    hosts = [
        await stack.start(
            build_server(
                limiter_settings(
                    backend="redis",
                    redis={"url": redis_server.url, "replicas": 3},
                    policies=[policy],
                    lease={"max_requests": 6, "ttl_s": 3.0, "min_headroom": 0.25},
                ),
                clock=clock,
            )
        )
        for _ in range(3)
    ]
    replicas = [limiter_pb2_grpc.LimiterServiceStub(stack.channel(h)) for h in hosts]
    pockets: list[Pocket] = [(0, 0.0)] * 6
    uses: list[float] = []  # when each admission was used
    from_pockets = 0

    async def caller(index: int, attempts: int) -> None:
        nonlocal from_pockets
        for _ in range(attempts):
            now = clock.wall()
            permits, lapses = pockets[index]
            if permits and now < lapses:
                pockets[index] = (permits - 1, lapses)
                uses.append(now - start)
                from_pockets += 1
                continue
            sent = clock.wall()  # the ttl counts from before the call
            request = limiter_pb2.AcquireRequest(api_key_id="shared", lease_requests=6)
            try:
                granted = await replicas[index % 3].Acquire(request)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                continue
            uses.append(now - start)
            pockets[index] = (granted.lease.requests, sent + granted.lease.ttl_ms / 1000)

    for round_ in range(40):  # 20 s: two and a half windows, or ten bucket refills
        if round_ in (0, 14):
            await caller(0, 1)
        elif round_ >= 16:
            await asyncio.gather(*(caller(i, 12) for i in range(6)))
        clock.advance(0.5)

    leases = sum([await metric(h.metrics_port, "sluice_limiter_leases_total") for h in hosts])
    assert leases > 0 and from_pockets > 0
    if algorithm == "token_bucket":
        # Any interval [a, b] of uses: at most capacity + rate * (b - a).
        moments = sorted(set(uses))
        for i, a in enumerate(moments):
            for b in moments[i:]:
                inside = sum(1 for t in uses if a <= t <= b)
                assert inside <= limit + rate * (b - a), (a, b, inside)
        assert len(uses) >= limit + rate * 12 - 6 * 6  # the burst got most of what refilled
    else:
        per_window = [sum(1 for t in uses if k * window <= t < (k + 1) * window) for k in range(3)]
        assert sum(per_window) == len(uses)
        assert all(count <= limit for count in per_window), per_window
        # Unused permits lapse (at most 6 per caller), so the busy window still gets close.
        assert per_window[1] >= limit - 6 * 6, per_window
