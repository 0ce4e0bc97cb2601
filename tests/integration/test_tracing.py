"""Distributed tracing: one Generate is one trace across router, limiter and provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.service import build_server as build_limiter
from sluice.provider.service import build_server as build_provider
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.wiring import build_server as build_router
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.fakes.common import FakeBehaviour
from tests.fakes.openai_fake import OpenAIFake
from tests.integration.test_provider_http import KEY, KEY_ENV, http_backend
from tests.support import (
    AUTH,
    FAST_BACKEND,
    SLOW_BACKEND,
    RedisProcess,
    ServiceStack,
    collect,
    eventually,
    limiter_settings,
    provider_settings,
    router_settings,
    start_suite,
    tracing_to,
)

SERVICES = {"sluice-router", "sluice-limiter", "sluice-provider"}
PROVIDER_STREAM = "/sluice.provider.v1.ProviderService/Stream"
LIMITER_ACQUIRE = "/sluice.limiter.v1.LimiterService/Acquire"
ROUTER_GENERATE = "/sluice.router.v1.RouterService/Generate"

Spans = list[telemetry_pb2.Span]


def request(prompt: str = "trace me") -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="default", messages=[common_pb2.Message(role="user", content=prompt)]
    )


def trace_reader(
    stub: telemetry_pb2_grpc.TelemetryServiceStub, trace_id: str
) -> Callable[[], Awaitable[Spans]]:
    async def read() -> Spans:
        try:
            response = await stub.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=trace_id))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
        return list(response.spans)

    return read


def signature(spans: Spans) -> set[tuple[str, str, str]]:
    return {(s.service_name, s.kind, s.name) for s in spans}


EXPECTED = {
    ("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE),
    ("sluice-router", "SPAN_KIND_CLIENT", LIMITER_ACQUIRE),
    ("sluice-limiter", "SPAN_KIND_SERVER", LIMITER_ACQUIRE),
    ("sluice-router", "SPAN_KIND_CLIENT", PROVIDER_STREAM),
    ("sluice-provider", "SPAN_KIND_SERVER", PROVIDER_STREAM),
}


async def test_generate_is_one_connected_trace(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, tracing=tracing_to(telemetry_host.port))

    events = await collect(suite.router_stub.Generate(request(), metadata=AUTH))
    trace_id = events[0].metadata.trace_id
    assert len(trace_id) == 32

    spans = await eventually(
        trace_reader(telemetry_stub, trace_id),
        lambda found: signature(found) >= EXPECTED,
        within_s=5,
    )

    assert signature(spans) >= EXPECTED, signature(spans)
    assert {s.service_name for s in spans} == SERVICES
    ids = {s.span_id for s in spans}
    assert len(ids) == len(spans)
    roots = [s for s in spans if not s.parent_span_id]
    assert [(r.service_name, r.kind, r.name) for r in roots] == [
        ("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE)
    ]
    orphans = [s.name for s in spans if s.parent_span_id and s.parent_span_id not in ids]
    assert orphans == []
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano > 0 for s in spans)
    by_id = {s.span_id: s for s in spans}
    # Each server span hangs off the router's client span for the same method.
    for server in (s for s in spans if s.kind == "SPAN_KIND_SERVER" and s.parent_span_id):
        parent = by_id[server.parent_span_id]
        assert (parent.service_name, parent.kind, parent.name) == (
            "sluice-router",
            "SPAN_KIND_CLIENT",
            server.name,
        )
        assert parent.start_time_unix_nano <= server.start_time_unix_nano


async def test_cancelled_stream_still_ends_the_router_client_span(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND, tracing=tracing_to(telemetry_host.port))
    call = suite.router_stub.Generate(request("a long answer, please"), metadata=AUTH)
    trace_id = ""
    async for event in call:
        if event.HasField("metadata"):
            trace_id = event.metadata.trace_id
        if event.HasField("data"):
            break
    call.cancel()
    assert len(trace_id) == 32

    def client_stream_span(found: Spans) -> telemetry_pb2.Span | None:
        for span in found:
            if (span.service_name, span.kind, span.name) == (
                "sluice-router",
                "SPAN_KIND_CLIENT",
                PROVIDER_STREAM,
            ):
                return span
        return None

    spans = await eventually(
        trace_reader(telemetry_stub, trace_id),
        lambda found: client_stream_span(found) is not None,
        within_s=5,
    )

    span = client_stream_span(spans)
    assert span is not None, "the router's client span for the provider stream never ended"
    assert span.end_time_unix_nano >= span.start_time_unix_nano
    assert "cancelled" in span.event_names
    assert span.attributes["rpc.grpc.status_code"] == str(grpc.StatusCode.CANCELLED.value[0])


def by_signature(spans: Spans) -> dict[tuple[str, str, str], telemetry_pb2.Span]:
    return {(s.service_name, s.kind, s.name): s for s in spans}


async def test_every_stream_span_ends_ok_on_completion(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, tracing=tracing_to(telemetry_host.port))
    events = await collect(suite.router_stub.Generate(request(), metadata=AUTH))
    trace_id = events[0].metadata.trace_id

    spans = await eventually(
        trace_reader(telemetry_stub, trace_id), lambda found: signature(found) >= EXPECTED
    )

    assert signature(spans) >= EXPECTED
    for span in spans:
        if span.kind == "SPAN_KIND_INTERNAL":  # the queue wait and the cache write
            assert span.name in {"queue_wait bulkhead", "cache put"}, span.name
            assert span.status_code == "STATUS_CODE_UNSET", span.name
            continue
        assert span.attributes["rpc.grpc.status_code"] == "0", span.name
        assert span.status_code == "STATUS_CODE_UNSET", span.name
        assert span.end_time_unix_nano >= span.start_time_unix_nano
    # The stream spans end with the stream, not at the first message.
    generate = by_signature(spans)[("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE)]
    stream = by_signature(spans)[("sluice-provider", "SPAN_KIND_SERVER", PROVIDER_STREAM)]
    assert generate.end_time_unix_nano >= stream.end_time_unix_nano


async def test_stream_spans_end_with_the_error_when_the_provider_is_down(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, tracing=tracing_to(telemetry_host.port))
    await stack.stop(suite.provider)
    call = suite.router_stub.Generate(request(), metadata=AUTH)
    try:
        await collect(call)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    else:
        raise AssertionError("Generate succeeded without a provider")

    async def errors() -> list[telemetry_pb2.TraceSummary]:
        response = await telemetry_stub.SearchTraces(
            telemetry_pb2.SearchTracesRequest(status=telemetry_pb2.TRACE_STATUS_ERROR)
        )
        return list(response.traces)

    [summary] = await eventually(errors, lambda traces: len(traces) == 1, within_s=5)
    # The router's server span ends last (after its retried client calls): wait for it.
    spans = await eventually(
        trace_reader(telemetry_stub, summary.trace_id),
        lambda found: any(
            s.kind == "SPAN_KIND_SERVER" and s.name == ROUTER_GENERATE for s in found
        ),
    )
    spans_by = by_signature(spans)
    server = spans_by[("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE)]
    client = spans_by[("sluice-router", "SPAN_KIND_CLIENT", PROVIDER_STREAM)]
    unavailable = str(grpc.StatusCode.UNAVAILABLE.value[0])
    for span in (server, client):
        assert span.status_code == "STATUS_CODE_ERROR", span.name
        assert span.attributes["rpc.grpc.status_code"] == unavailable, span.name
        assert span.end_time_unix_nano >= span.start_time_unix_nano
    assert client.parent_span_id == server.span_id


async def test_every_stream_span_ends_cancelled_when_the_client_goes(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND, tracing=tracing_to(telemetry_host.port))
    call = suite.router_stub.Generate(request("a long answer, please"), metadata=AUTH)
    trace_id = ""
    async for event in call:
        if event.HasField("metadata"):
            trace_id = event.metadata.trace_id
        if event.HasField("data"):
            break
    call.cancel()
    wanted = {
        ("sluice-router", "SPAN_KIND_SERVER", ROUTER_GENERATE),
        ("sluice-router", "SPAN_KIND_CLIENT", PROVIDER_STREAM),
        ("sluice-provider", "SPAN_KIND_SERVER", PROVIDER_STREAM),
    }

    admission = ("sluice-limiter", "SPAN_KIND_SERVER", LIMITER_ACQUIRE)
    # The limiter's span may reach the telemetry service in a later batch than the others.
    spans = await eventually(
        trace_reader(telemetry_stub, trace_id),
        lambda found: signature(found) >= wanted | {admission},
        within_s=5,
    )

    assert signature(spans) >= wanted, "a stream span never ended after cancellation"
    cancelled = str(grpc.StatusCode.CANCELLED.value[0])
    spans_by = by_signature(spans)
    for key in wanted:
        span = spans_by[key]
        assert span.attributes["rpc.grpc.status_code"] == cancelled, key
        assert "cancelled" in span.event_names, key
        assert span.end_time_unix_nano >= span.start_time_unix_nano
    # Admission finished normally before the stream was cancelled.
    acquire = spans_by[admission]
    assert acquire.attributes["rpc.grpc.status_code"] == "0"


async def test_low_head_sampling_still_delivers_every_error(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    tracing = {**tracing_to(telemetry_host.port), "sample_ratio": 0.0}
    suite = await start_suite(stack, tracing=tracing)
    events = await collect(suite.router_stub.Generate(request(), metadata=AUTH))
    ok_trace = events[0].metadata.trace_id
    await stack.stop(suite.provider)
    # A new prompt: the same one would be served from the response cache (a success).
    with pytest.raises(grpc.aio.AioRpcError):
        await collect(suite.router_stub.Generate(request("not cached"), metadata=AUTH))

    async def errors() -> list[telemetry_pb2.TraceSummary]:
        response = await telemetry_stub.SearchTraces(
            telemetry_pb2.SearchTracesRequest(status=telemetry_pb2.TRACE_STATUS_ERROR)
        )
        return list(response.traces)

    [summary] = await eventually(errors, lambda traces: len(traces) == 1, within_s=5)

    # The router's server span ends last (after its retried client calls), so it may
    # reach the telemetry service in a later batch than the decision.
    spans = await eventually(
        trace_reader(telemetry_stub, summary.trace_id),
        lambda found: any(s.kind == "SPAN_KIND_SERVER" for s in found),
        within_s=5,
    )
    # Only the failed spans of the unsampled trace were exported, still parented.
    assert {(s.kind, s.name, s.status_code) for s in spans} == {
        ("SPAN_KIND_SERVER", ROUTER_GENERATE, "STATUS_CODE_ERROR"),
        ("SPAN_KIND_CLIENT", PROVIDER_STREAM, "STATUS_CODE_ERROR"),
    }
    assert await trace_reader(telemetry_stub, ok_trace)() == []  # sampled out at the head


# -- the full tree: normal, retried, fallback and failed requests ---------------------------

Tree = tuple[str, str, str, str, tuple["Tree", ...]]


def tree(spans: Spans) -> Tree:
    """The trace as nested (service, kind, name, status, children) in start order."""
    children: dict[str, list[telemetry_pb2.Span]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)

    def node(span: telemetry_pb2.Span) -> Tree:
        below = sorted(children.get(span.span_id, []), key=lambda s: s.start_time_unix_nano)
        return (
            span.service_name.removeprefix("sluice-"),
            span.kind.removeprefix("SPAN_KIND_"),
            span.name,
            span.status_code.removeprefix("STATUS_CODE_"),
            tuple(node(child) for child in below),
        )

    [root] = children[""]  # one root, and every other span hangs below it
    built = node(root)
    assert count(built) == len(spans), "a span's parent is missing from the trace"
    return built


def count(node: Tree) -> int:
    return 1 + sum(count(child) for child in node[4])


def leaf(service: str, kind: str, name: str, status: str = "UNSET") -> Tree:
    return (service, kind, name, status, ())


UPSTREAM_MODEL = "gpt-4o"
ACQUIRE = ("router", "CLIENT", LIMITER_ACQUIRE, "UNSET", (
    ("limiter", "SERVER", LIMITER_ACQUIRE, "UNSET", (leaf("limiter", "CLIENT", "EVALSHA"),)),
))  # fmt: skip
BULKHEAD = leaf("router", "INTERNAL", "queue_wait bulkhead")
CACHE_PUT = ("router", "INTERNAL", "cache put", "UNSET", (leaf("router", "CLIENT", "SET"),))
CACHE_GET = ("router", "INTERNAL", "cache get", "UNSET", (leaf("router", "CLIENT", "GET"),))


def http_stream(status: str = "UNSET") -> Tree:
    """A provider stream to the OpenAI-compatible fake: its upstream HTTP call below."""
    provider = ("provider", "SERVER", PROVIDER_STREAM, status, (
        leaf("provider", "CLIENT", f"chat {UPSTREAM_MODEL}", status),
    ))  # fmt: skip
    return ("router", "CLIENT", PROVIDER_STREAM, status, (provider,))


def simulated_stream(status: str = "UNSET") -> Tree:
    provider = leaf("provider", "SERVER", PROVIDER_STREAM, status)
    return ("router", "CLIENT", PROVIDER_STREAM, status, (provider,))


def generate(status: str, *children: Tree) -> Tree:
    return ("router", "SERVER", ROUTER_GENERATE, status, children)


class HealsAfterFirst(list[dict[str, object]]):
    """The fake's request log; the second request finds the fault gone (a transient 500)."""

    def __init__(self, behaviour: FakeBehaviour) -> None:
        super().__init__()
        self._behaviour = behaviour

    def append(self, item: dict[str, object]) -> None:
        if self:
            self._behaviour.fault = None
        super().append(item)


@pytest.fixture
async def traced_rig(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    redis_server: RedisProcess,
) -> AsyncIterator[tuple[router_pb2_grpc.RouterServiceStub, OpenAIFake]]:
    """Router, limiter (Redis) and provider (simulated + OpenAI fake), Redis cache, traced."""
    tracing = {"tracing": tracing_to(telemetry_host.port)}
    limiter = await stack.start(
        build_limiter(limiter_settings(backend="redis", redis={"url": redis_server.url}, **tracing))
    )
    fake = OpenAIFake(FakeBehaviour(api_key=KEY, answer_tokens=4))
    async with fake:
        provider = await stack.start(
            build_provider(
                provider_settings(
                    fault_injection=True,
                    backends={
                        "oa": http_backend("openai", fake, model=UPSTREAM_MODEL),
                        "primary": FAST_BACKEND,
                        "secondary": FAST_BACKEND,
                    },
                    **tracing,
                ),
                environ={KEY_ENV: KEY},
            )
        )
        router = await stack.start(
            build_router(
                router_settings(
                    limiter,
                    provider,
                    models={
                        "gpt": {"backends": [{"backend": "oa"}]},
                        "chain": {"backends": [{"backend": "primary"}, {"backend": "secondary"}]},
                        "solo": {"backends": [{"backend": "primary"}]},
                    },
                    resilience={
                        "retry": {"initial_backoff_ms": 1, "max_backoff_ms": 2},
                        "cache": {"redis_url": redis_server.url},
                    },
                    **tracing,
                )
            )
        )
        yield router_pb2_grpc.RouterServiceStub(stack.channel(router)), fake


async def traced(
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub, trace_id: str, expected: Tree
) -> tuple[Tree, Spans]:
    """The trace once all its spans arrived, as a tree."""
    spans = await eventually(
        trace_reader(telemetry_stub, trace_id),
        lambda found: len(found) >= count(expected),
        within_s=5,
    )
    return tree(spans), spans


def server_span(spans: Spans) -> telemetry_pb2.Span:
    [span] = [s for s in spans if s.kind == "SPAN_KIND_SERVER" and s.name == ROUTER_GENERATE]
    return span


async def test_full_tree_of_a_normal_request(
    traced_rig: tuple[router_pb2_grpc.RouterServiceStub, OpenAIFake],
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    router, _ = traced_rig
    events = await collect(
        router.Generate(
            router_pb2.GenerateRequest(
                model="gpt",
                messages=[common_pb2.Message(role="user", content="a normal request")],
            ),
            metadata=AUTH,
        )
    )
    assert events[-1].complete.fallback_step == common_pb2.FALLBACK_STEP_PRIMARY
    expected = generate("UNSET", ACQUIRE, BULKHEAD, http_stream(), CACHE_PUT)

    found, spans = await traced(telemetry_stub, events[0].metadata.trace_id, expected)

    assert found == expected
    by_name = {s.name: s for s in spans}
    assert by_name["EVALSHA"].attributes["db.system"] == "redis"
    assert by_name["EVALSHA"].attributes["db.operation.name"] == "EVALSHA"
    assert by_name["SET"].attributes["db.system.name"] == "redis"
    assert by_name["queue_wait bulkhead"].attributes["sluice.backend"] == "oa"
    assert by_name["cache put"].attributes["sluice.cache.store"] == "redis"
    upstream = by_name[f"chat {UPSTREAM_MODEL}"]
    assert upstream.attributes["gen_ai.request.model"] == UPSTREAM_MODEL
    assert upstream.attributes["server.address"] == "127.0.0.1"
    assert server_span(spans).event_names == []  # nothing went wrong: no retry, no fallback


async def test_full_tree_of_a_retried_request(
    traced_rig: tuple[router_pb2_grpc.RouterServiceStub, OpenAIFake],
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    router, fake = traced_rig
    fake.behaviour.fault = "server_error"
    fake.behaviour.requests = HealsAfterFirst(fake.behaviour)
    events = await collect(
        router.Generate(
            router_pb2.GenerateRequest(
                model="gpt",
                messages=[common_pb2.Message(role="user", content="a retried request")],
            ),
            metadata=AUTH,
        )
    )
    assert events[-1].complete.fallback_step == common_pb2.FALLBACK_STEP_PRIMARY
    assert len(fake.behaviour.requests) == 2
    expected = generate(
        "UNSET", ACQUIRE, BULKHEAD, http_stream("ERROR"), BULKHEAD, http_stream(), CACHE_PUT
    )

    found, spans = await traced(telemetry_stub, events[0].metadata.trace_id, expected)

    assert found == expected
    assert list(server_span(spans).event_names) == ["retry"]


async def test_full_tree_of_a_fallback_request(
    traced_rig: tuple[router_pb2_grpc.RouterServiceStub, OpenAIFake],
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    router, _ = traced_rig
    events = await collect(
        router.Generate(
            router_pb2.GenerateRequest(
                model="chain",
                messages=[common_pb2.Message(role="user", content="a fallback request")],
            ),
            metadata=(*AUTH, ("x-sluice-fault", "error_rate=1,backend=primary")),
        )
    )
    assert events[-1].complete.fallback_step == common_pb2.FALLBACK_STEP_SECONDARY
    failed = simulated_stream("ERROR")
    expected = generate(
        "UNSET",
        ACQUIRE,
        *(BULKHEAD, failed) * 2,  # the primary, retried once
        BULKHEAD,
        simulated_stream(),
        CACHE_PUT,
    )

    found, spans = await traced(telemetry_stub, events[0].metadata.trace_id, expected)

    assert found == expected
    assert list(server_span(spans).event_names) == ["retry", "fallback"]


async def test_full_tree_of_a_failed_request(
    traced_rig: tuple[router_pb2_grpc.RouterServiceStub, OpenAIFake],
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    router, _ = traced_rig
    call = router.Generate(
        router_pb2.GenerateRequest(
            model="solo",
            messages=[common_pb2.Message(role="user", content="a failed request")],
        ),
        metadata=(*AUTH, ("x-sluice-fault", "error_rate=1")),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    async def errors() -> list[telemetry_pb2.TraceSummary]:
        response = await telemetry_stub.SearchTraces(
            telemetry_pb2.SearchTracesRequest(status=telemetry_pb2.TRACE_STATUS_ERROR)
        )
        return list(response.traces)

    [summary] = await eventually(errors, lambda traces: len(traces) == 1, within_s=5)
    failed = simulated_stream("ERROR")
    # Both attempts fail, the cache has nothing (a miss read from Redis), no simplified
    # answer is configured: the client gets the error.
    expected = generate("ERROR", ACQUIRE, BULKHEAD, failed, BULKHEAD, failed, CACHE_GET)

    found, spans = await traced(telemetry_stub, summary.trace_id, expected)

    assert found == expected
    assert list(server_span(spans).event_names) == ["retry", "fallback"]
    cache_get = next(s for s in spans if s.name == "cache get")
    assert cache_get.attributes["sluice.cache.hit"] == "False"
