"""The limiter's Envoy RateLimitService (RLS v3) over a real channel, on a fake clock."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.edge import key_subject
from sluice.limiter.service import build_server as build_limiter
from sluice.vendor.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from tests.support import FakeClock, ServiceStack, limiter_settings, metric

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
DOMAIN = "sluice-edge"

EDGE = {
    "policies": [
        {"name": "all", "scope": "global", "limit": 5, "refill_per_second": 1},
        {"name": "per_key", "scope": "api_key", "limit": 2, "refill_per_second": 1},
        {
            "name": "per_route",
            "scope": "endpoint",
            "match": {"endpoint": ["svc/Slow"]},
            "limit": 60,
            "window_s": 60,
            "algorithm": "fixed_window",
        },
    ]
}


@pytest.fixture
async def rls_host(stack: ServiceStack, fake_clock: FakeClock) -> ServiceHost:
    return await stack.start(build_limiter(limiter_settings(edge=EDGE), clock=fake_clock))


@pytest.fixture
def rls(stack: ServiceStack, rls_host: ServiceHost) -> rls_pb2_grpc.RateLimitServiceStub:
    return rls_pb2_grpc.RateLimitServiceStub(stack.channel(rls_host))


def descriptor(key: str, value: str) -> rls_pb2.RateLimitDescriptor:
    return rls_pb2.RateLimitDescriptor(
        entries=[rls_pb2.RateLimitDescriptorEntry(key=key, value=value)]
    )


def ask(
    api_key: str | None = "sk-a", route: str = "svc/Fast", domain: str = DOMAIN
) -> rls_pb2.RateLimitRequest:
    found = [descriptor("generic_key", "global")]
    if api_key is not None:
        found.append(descriptor("api_key", api_key))
    found.append(descriptor("route", route))
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=found)


def test_key_subject_hashes_raw_and_bearer_keys_alike() -> None:
    digest = hashlib.sha256(b"sk-a").hexdigest()[:16]
    assert key_subject("sk-a") == digest
    assert key_subject("Bearer sk-a") == digest
    assert key_subject("bearer   sk-a ") == digest
    assert key_subject("sk-b") != digest


async def test_statuses_follow_descriptors_and_report_the_tightest_limit(
    rls: rls_pb2_grpc.RateLimitServiceStub,
) -> None:
    response = await rls.ShouldRateLimit(ask())

    assert response.overall_code == OK
    glob, key, route = response.statuses
    assert (glob.code, key.code, route.code) == (OK, OK, OK)
    assert glob.current_limit.name == "all"
    assert glob.current_limit.requests_per_unit == 5
    assert glob.limit_remaining == 4
    assert key.current_limit.name == "per_key"
    assert key.limit_remaining == 1
    assert key.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.SECOND
    assert key.duration_until_reset.seconds == 1  # one token short, refilled at 1/s
    assert not route.HasField("current_limit")  # no policy for svc/Fast


async def test_over_the_key_limit_is_over_limit_with_headers_and_body(
    rls: rls_pb2_grpc.RateLimitServiceStub, rls_host: ServiceHost
) -> None:
    await rls.ShouldRateLimit(ask())
    await rls.ShouldRateLimit(ask())
    refused = await rls.ShouldRateLimit(ask())

    assert refused.overall_code == OVER
    glob, key, _ = refused.statuses
    assert glob.code == OK  # nothing consumed from it (all-or-nothing) ...
    assert glob.limit_remaining == 3
    assert key.code == OVER
    assert key.limit_remaining == 0
    assert key.duration_until_reset.seconds == 1
    headers = {h.key: h.value for h in refused.response_headers_to_add}
    assert headers == {"x-sluice-policy": "per_key", "retry-after": "1"}
    assert b"policy per_key" in refused.raw_body
    assert b"sk-a" not in refused.raw_body  # the key itself never leaks
    # ... and another key still passes, using the global limit.
    other = await rls.ShouldRateLimit(ask(api_key="sk-b"))
    assert other.overall_code == OK
    assert other.statuses[0].limit_remaining == 2
    port = rls_host.metrics_port
    assert (
        await metric(port, "sluice_limiter_edge_decisions_total", policy="per_key", result="denied")
        == 1
    )
    assert (
        await metric(port, "sluice_limiter_edge_decisions_total", policy="all", result="allowed")
        == 3
    )


async def test_keyless_requests_are_held_by_the_global_rule(
    rls: rls_pb2_grpc.RateLimitServiceStub, fake_clock: FakeClock
) -> None:
    codes = [(await rls.ShouldRateLimit(ask(api_key=None))).overall_code for _ in range(6)]
    assert codes == [OK] * 5 + [OVER]

    fake_clock.advance(1.0)  # one global token back
    assert (await rls.ShouldRateLimit(ask(api_key=None))).overall_code == OK


async def test_route_policy_applies_only_to_its_route(
    rls: rls_pb2_grpc.RateLimitServiceStub,
) -> None:
    response = await rls.ShouldRateLimit(ask(route="svc/Slow"))
    route = response.statuses[2]
    assert route.current_limit.name == "per_route"
    assert route.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE
    assert route.limit_remaining == 59


async def test_same_key_twice_counts_once_and_unknown_descriptors_pass(
    rls: rls_pb2_grpc.RateLimitServiceStub,
) -> None:
    request = ask()
    request.descriptors.append(descriptor("api_key", "Bearer sk-a"))
    request.descriptors.append(descriptor("remote_address", "10.0.0.1"))
    response = await rls.ShouldRateLimit(request)

    assert response.overall_code == OK
    assert len(response.statuses) == 5
    assert response.statuses[1].limit_remaining == 1  # charged once, not twice
    assert not response.statuses[3].HasField("current_limit")
    assert not response.statuses[4].HasField("current_limit")


async def test_other_domains_are_not_limited(rls: rls_pb2_grpc.RateLimitServiceStub) -> None:
    for _ in range(10):
        response = await rls.ShouldRateLimit(ask(domain="someone-else"))
        assert response.overall_code == OK


async def test_rls_is_listed_for_health_and_reflection(
    stack: ServiceStack, rls_host: ServiceHost
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(stack.channel(rls_host))
    reply = await health.Check(
        health_pb2.HealthCheckRequest(service="envoy.service.ratelimit.v3.RateLimitService")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_edge_policies_must_count_requests_in_a_supported_scope() -> None:
    from sluice.core.config import ConfigError

    with pytest.raises(ConfigError, match="scope must be"):
        limiter_settings(edge={"policies": [{"name": "m", "scope": "model", "limit": 1}]})
    with pytest.raises(ConfigError, match="unit must be requests"):
        limiter_settings(
            edge={"policies": [{"name": "t", "scope": "global", "unit": "tokens", "limit": 1}]}
        )
    with pytest.raises(ConfigError, match="duplicate names"):
        limiter_settings(
            policies=[{"name": "x", "limit": 1}],
            edge={"policies": [{"name": "x", "scope": "global", "limit": 1}]},
        )


async def test_a_malformed_call_is_not_served_as_ok(
    stack: ServiceStack, rls_host: ServiceHost
) -> None:
    channel = stack.channel(rls_host)
    call = channel.unary_unary(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\xff\xff\xff")
    assert caught.value.code() != grpc.StatusCode.OK
