"""One HTTP request through real Envoy is one trace: Envoy → router → limiter, provider."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.e2e.conftest import DEV_KEY, RunningSuite, start_suite

pytestmark = pytest.mark.e2e

BODY: dict[str, Any] = {
    "model": "default",
    "messages": [{"role": "user", "content": "trace this"}],
    "max_tokens": 4,
    "user": "user-7",
    "session_id": "session-9",
}
COMPLETE = "/sluice.router.v1.RouterService/Complete"
ACQUIRE = "/sluice.limiter.v1.LimiterService/Acquire"
STREAM = "/sluice.provider.v1.ProviderService/Stream"
EDGE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
EDGE_LIMIT_CLIENT = "async envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit egress"


def wait_for_trace(suite: RunningSuite, trace_id: str, count: int) -> list[telemetry_pb2.Span]:
    with suite.sync_channel("telemetry") as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        deadline = time.monotonic() + 15
        spans: list[telemetry_pb2.Span] = []
        while time.monotonic() < deadline:
            try:
                request = telemetry_pb2.GetTraceRequest(trace_id=trace_id)
                spans = list(stub.GetTrace(request, timeout=5).spans)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
            if len(spans) >= count:
                break
            time.sleep(0.1)
    return spans


def started(span: telemetry_pb2.Span) -> int:
    return span.start_time_unix_nano


def one(spans: list[telemetry_pb2.Span], service: str, kind: str, name: str) -> telemetry_pb2.Span:
    found = [s for s in spans if (s.service_name, s.kind, s.name) == (service, kind, name)]
    assert len(found) == 1, [(s.service_name, s.kind, s.name) for s in spans]
    return found[0]


def test_a_request_joins_the_callers_traceparent_and_is_one_tree(suite: RunningSuite) -> None:
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    response = httpx.post(
        f"{suite.edge}/v1/complete",
        json=BODY,
        headers={
            "authorization": f"Bearer {DEV_KEY}",
            "traceparent": f"00-{trace_id}-{caller_span}-01",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["trace_id"] == trace_id

    spans = wait_for_trace(suite, trace_id, 11)

    ingress = one(spans, "sluice-envoy", "SPAN_KIND_SERVER", "ingress")
    egress = one(spans, "sluice-envoy", "SPAN_KIND_CLIENT", "router router egress")
    # The edge rate limit decision: Envoy asks the limiter's RLS before routing.
    edge_limit_client = one(spans, "sluice-envoy", "SPAN_KIND_CLIENT", EDGE_LIMIT_CLIENT)
    edge_limit = one(spans, "sluice-limiter", "SPAN_KIND_SERVER", EDGE_LIMIT)
    router = one(spans, "sluice-router", "SPAN_KIND_SERVER", COMPLETE)
    acquire_client = one(spans, "sluice-router", "SPAN_KIND_CLIENT", ACQUIRE)
    acquire = one(spans, "sluice-limiter", "SPAN_KIND_SERVER", ACQUIRE)
    stream_client = one(spans, "sluice-router", "SPAN_KIND_CLIENT", STREAM)
    stream = one(spans, "sluice-provider", "SPAN_KIND_SERVER", STREAM)
    bulkhead = one(spans, "sluice-router", "SPAN_KIND_INTERNAL", "queue_wait bulkhead")
    cache_put = one(spans, "sluice-router", "SPAN_KIND_INTERNAL", "cache put")
    assert len(spans) == 11
    parent_of = {
        ingress.span_id: caller_span,  # the web client's span, from its traceparent
        edge_limit_client.span_id: ingress.span_id,
        edge_limit.span_id: edge_limit_client.span_id,
        egress.span_id: ingress.span_id,
        router.span_id: egress.span_id,
        acquire_client.span_id: router.span_id,
        acquire.span_id: acquire_client.span_id,
        stream_client.span_id: router.span_id,
        stream.span_id: stream_client.span_id,
        bulkhead.span_id: router.span_id,
        cache_put.span_id: router.span_id,
    }
    # In order: admission, the wait for a bulkhead slot, the provider stream, the cache.
    in_order = sorted((acquire_client, bulkhead, stream_client, cache_put), key=started)
    assert in_order == [acquire_client, bulkhead, stream_client, cache_put]
    assert {s.span_id: s.parent_span_id for s in spans} == parent_of
    for child in spans:
        parent = next((s for s in spans if s.span_id == child.parent_span_id), None)
        if parent is not None:
            assert parent.start_time_unix_nano <= child.start_time_unix_nano
            assert child.end_time_unix_nano <= parent.end_time_unix_nano + 5_000_000
    assert {s.status_code for s in spans} == {"STATUS_CODE_UNSET"}
    assert ingress.attributes["http.status_code"] == "200"
    attributes = dict(router.attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == attributes["model_name"] == "default"
    assert attributes["user_id"] == "user-7"
    assert attributes["session_id"] == attributes["gen_ai.conversation.id"] == "session-9"
    assert int(attributes["gen_ai.usage.output_tokens"]) == 4
    assert int(attributes["token_count"]) == int(attributes["gen_ai.usage.input_tokens"]) + 4
    assert attributes["gen_ai.response.finish_reasons"] == "length"
    assert float(attributes["gen_ai.server.time_to_first_token"]) > 0
    assert "trace this" not in str(attributes)  # prompt text is never recorded


def test_a_failed_request_is_one_tree_with_the_failure_on_each_hop(suite: RunningSuite) -> None:
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    response = httpx.post(
        f"{suite.edge}/v1/complete",
        json=BODY,
        headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},  # no API key
        timeout=30,
    )
    assert response.status_code == 401

    spans = wait_for_trace(suite, trace_id, 5)

    ingress = one(spans, "sluice-envoy", "SPAN_KIND_SERVER", "ingress")
    egress = one(spans, "sluice-envoy", "SPAN_KIND_CLIENT", "router router egress")
    router = one(spans, "sluice-router", "SPAN_KIND_SERVER", COMPLETE)
    one(spans, "sluice-limiter", "SPAN_KIND_SERVER", EDGE_LIMIT)  # the edge still limits it
    assert len(spans) == 5  # + the edge limit pair; rejected before Acquire and the provider
    assert (ingress.parent_span_id, egress.parent_span_id, router.parent_span_id) == (
        caller_span,
        ingress.span_id,
        egress.span_id,
    )
    assert ingress.attributes["http.status_code"] == "401"
    assert egress.attributes["grpc.status_code"] == "16"
    assert router.attributes["rpc.grpc.status_code"] == "16"
    assert router.attributes["error.type"] == "AUTHORIZATION_ERROR"
    # A caller's mistake is not a server error on the router's span.
    assert router.status_code == "STATUS_CODE_UNSET"
    with suite.sync_channel("telemetry") as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        found = stub.SearchTraces(
            telemetry_pb2.SearchTracesRequest(attributes={"user_id": "user-7"}), timeout=5
        )
    assert trace_id not in {t.trace_id for t in found.traces}  # never reached the GenAI part


@pytest.fixture(scope="module")
def fault_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    """A suite whose provider takes x-sluice-fault, with a two-step and a one-step alias."""
    fast = {"time_to_first_token_ms": 0, "tokens_per_second": 0, "answer_tokens": 8}
    with start_suite(
        tmp_path_factory.mktemp("fault-suite"),
        provider={"fault_injection": True, "backends": {"primary": fast, "secondary": fast}},
        router={
            "models": {
                "default": {"backends": [{"backend": "primary"}, {"backend": "secondary"}]},
                "solo": {"backends": [{"backend": "primary"}]},
            },
            "resilience": {"retry": {"initial_backoff_ms": 1, "max_backoff_ms": 2}},
        },
    ) as running:
        yield running


Tree = tuple[str, str, str, tuple["Tree", ...]]


def tree(spans: list[telemetry_pb2.Span], caller_span: str) -> Tree:
    """(service, kind, name + status, children in start order) from the web client's span."""
    children: dict[str, list[telemetry_pb2.Span]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)

    def node(span: telemetry_pb2.Span) -> Tree:
        below = sorted(children.get(span.span_id, []), key=started)
        status = span.status_code.removeprefix("STATUS_CODE_")
        return (
            span.service_name.removeprefix("sluice-"),
            span.kind.removeprefix("SPAN_KIND_"),
            f"{span.name} {status}",
            tuple(node(child) for child in below),
        )

    [root] = children[caller_span]
    return node(root)


def size(node: Tree) -> int:
    return 1 + sum(size(child) for child in node[3])


def edge(router_status: str, *children: Tree) -> Tree:
    """Envoy's ingress span: its edge rate-limit call, then egress to the router's span."""
    limit_check = ("envoy", "CLIENT", f"{EDGE_LIMIT_CLIENT} UNSET", (
        ("limiter", "SERVER", f"{EDGE_LIMIT} UNSET", ()),
    ))  # fmt: skip
    router = ("router", "SERVER", f"{COMPLETE} {router_status}", children)
    egress = ("envoy", "CLIENT", f"router router egress {router_status}", (router,))
    return ("envoy", "SERVER", f"ingress {router_status}", (limit_check, egress))


ADMISSION = ("router", "CLIENT", f"{ACQUIRE} UNSET", (
    ("limiter", "SERVER", f"{ACQUIRE} UNSET", ()),
))  # fmt: skip
WAIT = ("router", "INTERNAL", "queue_wait bulkhead UNSET", ())


def stream(status: str) -> Tree:
    return (
        "router",
        "CLIENT",
        f"{STREAM} {status}",
        (("provider", "SERVER", f"{STREAM} {status}", ()),),
    )


def traced_post(suite: RunningSuite, model: str, fault: str) -> tuple[httpx.Response, str, str]:
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    response = httpx.post(
        f"{suite.edge}/v1/complete",
        json={**BODY, "model": model, "messages": [{"role": "user", "content": trace_id}]},
        headers={
            "authorization": f"Bearer {DEV_KEY}",
            "traceparent": f"00-{trace_id}-{caller_span}-01",
            "x-sluice-fault": fault,
        },
        timeout=30,
    )
    return response, trace_id, caller_span


def test_a_retried_then_failed_over_request_is_one_tree(fault_suite: RunningSuite) -> None:
    response, trace_id, caller_span = traced_post(
        fault_suite, "default", "error_rate=1,backend=primary"
    )
    assert response.status_code == 200, response.text
    assert response.json()["fallback_step"] == "FALLBACK_STEP_SECONDARY"
    cache_put = ("router", "INTERNAL", "cache put UNSET", ())
    expected = edge(
        "UNSET",
        ADMISSION,
        *(WAIT, stream("ERROR")) * 2,  # the primary, retried once
        WAIT,
        stream("UNSET"),  # the secondary serves
        cache_put,
    )

    spans = wait_for_trace(fault_suite, trace_id, size(expected))

    assert tree(spans, caller_span) == expected
    router = one(spans, "sluice-router", "SPAN_KIND_SERVER", COMPLETE)
    assert list(router.event_names) == ["retry", "fallback"]


def test_a_failed_request_is_one_tree_down_to_the_cache_miss(fault_suite: RunningSuite) -> None:
    response, trace_id, caller_span = traced_post(fault_suite, "solo", "error_rate=1")
    assert response.status_code == 503, response.text
    cache_get = ("router", "INTERNAL", "cache get UNSET", ())
    # The 503 marks Envoy's spans failed too, so the whole path shows the failure.
    expected = edge("ERROR", ADMISSION, WAIT, stream("ERROR"), WAIT, stream("ERROR"), cache_get)

    spans = wait_for_trace(fault_suite, trace_id, size(expected))

    found = tree(spans, caller_span)
    assert found == expected
    router = one(spans, "sluice-router", "SPAN_KIND_SERVER", COMPLETE)
    assert list(router.event_names) == ["retry", "fallback"]
    assert (
        one(spans, "sluice-router", "SPAN_KIND_INTERNAL", "cache get").attributes[
            "sluice.cache.hit"
        ]
        == "False"
    )
