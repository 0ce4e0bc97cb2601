"""LimiterService.Acquire over a real channel, on a fake clock."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from google.rpc import error_details_pb2

from sluice.core.grpcx.server import ServiceHost
from sluice.limiter.service import build_server as build_limiter
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc
from tests.support import (
    FakeClock,
    ServiceStack,
    details_of,
    error_info,
    limiter_settings,
    metric,
    rich_status,
)


@pytest.fixture
def limiter(stack: ServiceStack, limiter_host: ServiceHost) -> limiter_pb2_grpc.LimiterServiceStub:
    return limiter_pb2_grpc.LimiterServiceStub(stack.channel(limiter_host))


def acquire(key: str = "k1", requests: int = 1) -> limiter_pb2.AcquireRequest:
    return limiter_pb2.AcquireRequest(
        api_key_id=key, tenant="t", endpoint="/x", model="default", requests=requests, tokens=10
    )


async def test_acquire_allowed_reports_the_bucket(
    limiter: limiter_pb2_grpc.LimiterServiceStub,
) -> None:
    first = await limiter.Acquire(acquire())
    second = await limiter.Acquire(acquire())

    assert first.limit == 3
    assert (first.remaining, second.remaining) == (2, 1)
    assert first.reset_after_ms == 1000  # one token short of full at 1/s
    assert second.reset_after_ms == 2000
    assert len(first.reservation_id) == 16
    assert first.reservation_id != second.reservation_id


async def test_exhausted_bucket_is_resource_exhausted_with_quota_failure_and_retry_info(
    limiter: limiter_pb2_grpc.LimiterServiceStub,
) -> None:
    for _ in range(3):
        await limiter.Acquire(acquire())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Acquire(acquire())

    err = caught.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rich_status(err)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_info(err)
    assert info.reason == "QUOTA_EXCEEDED"
    assert info.domain == "sluice.dev"
    assert info.metadata["policy"] == "per_key"
    assert info.metadata["limit"] == "3"
    [quota] = details_of(status, error_details_pb2.QuotaFailure)
    assert [v.subject for v in quota.violations] == ["api_key:k1"]
    [retry] = details_of(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == 1_000_000_000


async def test_waiting_retry_after_admits_again(
    limiter: limiter_pb2_grpc.LimiterServiceStub, fake_clock: FakeClock
) -> None:
    for _ in range(3):
        await limiter.Acquire(acquire())
    with pytest.raises(grpc.aio.AioRpcError):
        await limiter.Acquire(acquire())

    fake_clock.advance(1.0)

    assert (await limiter.Acquire(acquire())).remaining == 0


async def test_keys_are_limited_separately_and_overrides_apply(
    limiter: limiter_pb2_grpc.LimiterServiceStub,
) -> None:
    for _ in range(3):
        await limiter.Acquire(acquire("k1"))

    assert (await limiter.Acquire(acquire("k2"))).remaining == 2
    big = await limiter.Acquire(acquire("big"))
    assert (big.limit, big.remaining) == (100, 99)


async def test_request_larger_than_capacity_has_no_retry_info(
    limiter: limiter_pb2_grpc.LimiterServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Acquire(acquire(requests=4))

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rich_status(caught.value)
    assert details_of(status, error_details_pb2.RetryInfo) == []
    assert len(details_of(status, error_details_pb2.QuotaFailure)) == 1


async def test_missing_api_key_id_is_invalid_argument(
    limiter: limiter_pb2_grpc.LimiterServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Acquire(acquire(key=""))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "MISSING_PARAMETER"
    [bad] = details_of(rich_status(caught.value), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["api_key_id"]


async def test_negative_request_count_cannot_mint_tokens(
    limiter: limiter_pb2_grpc.LimiterServiceStub,
) -> None:
    # A negative count must be refused (or at least not refill the bucket past capacity).
    try:
        response = await limiter.Acquire(acquire(requests=-100))
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert response.remaining <= response.limit

    allowed = 0
    for _ in range(10):
        try:
            await limiter.Acquire(acquire())
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            allowed += 1
    assert allowed == 3


async def test_decisions_are_counted(
    limiter: limiter_pb2_grpc.LimiterServiceStub, limiter_host: ServiceHost
) -> None:
    for _ in range(4):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await limiter.Acquire(acquire())

    port = limiter_host.metrics_port
    assert await metric(port, "sluice_limiter_decisions_total", result="allowed") == 3
    assert await metric(port, "sluice_limiter_decisions_total", result="denied") == 1
    assert (
        await metric(
            port,
            "sluice_rpc_requests_total",
            method="/sluice.limiter.v1.LimiterService/Acquire",
            code="RESOURCE_EXHAUSTED",
        )
        == 1
    )
    assert await metric(port, "sluice_errors_total", reason="QUOTA_EXCEEDED") == 1


# -- policies, token reservations and Reconcile ---------------------------------------


@pytest.fixture
async def policy_limiter(
    stack: ServiceStack, fake_clock: FakeClock
) -> tuple[limiter_pb2_grpc.LimiterServiceStub, ServiceHost]:
    host = await stack.start(
        build_limiter(
            limiter_settings(
                policies=[
                    {"name": "per_key", "limit": 5, "refill_per_second": 1},
                    {
                        "name": "per_model",
                        "scope": "model",
                        "algorithm": "fixed_window",
                        "limit": 3,
                        "window_s": 10,
                    },
                    {"name": "tpm", "unit": "tokens", "limit": 1000, "refill_per_second": 10},
                ]
            ),
            clock=fake_clock,
        )
    )
    return limiter_pb2_grpc.LimiterServiceStub(stack.channel(host)), host


def ask(tokens: int, key: str = "k1", model: str = "m") -> limiter_pb2.AcquireRequest:
    return limiter_pb2.AcquireRequest(api_key_id=key, model=model, requests=1, tokens=tokens)


async def test_every_matching_policy_is_reported(
    policy_limiter: tuple[limiter_pb2_grpc.LimiterServiceStub, ServiceHost],
) -> None:
    limiter, _ = policy_limiter

    granted = await limiter.Acquire(ask(400))

    assert [(p.policy, p.subject, p.unit, p.remaining, p.limit) for p in granted.policies] == [
        ("per_key", "api_key:k1", "requests", 4, 5),
        ("per_model", "model:m", "requests", 2, 3),
        ("tpm", "api_key:k1", "tokens", 600, 1000),
    ]
    # The headline is the tightest request limit.
    assert (granted.remaining, granted.limit) == (2, 3)


async def test_refusal_names_every_refusing_policy_and_the_longest_wait(
    policy_limiter: tuple[limiter_pb2_grpc.LimiterServiceStub, ServiceHost],
) -> None:
    limiter, host = policy_limiter
    for key in ("a", "b", "c"):
        await limiter.Acquire(ask(300, key=key))
    await limiter.Acquire(ask(600, key="d", model="other"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Acquire(ask(600, key="d"))  # model m is full (10 s); d's tokens (20 s)

    status = rich_status(caught.value)
    [quota] = details_of(status, error_details_pb2.QuotaFailure)
    assert [v.subject for v in quota.violations] == ["model:m", "api_key:d"]
    assert "per 10 s window" in quota.violations[0].description
    [retry] = details_of(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == 20_000_000_000
    info = error_info(caught.value)
    assert (info.metadata["policy"], info.metadata["policies"]) == ("per_model", "per_model,tpm")
    # Nothing was taken from the policies that would have admitted it.
    assert (await limiter.Acquire(ask(0, key="d", model="x"))).policies[0].remaining == 3
    assert (
        await metric(
            host.metrics_port, "sluice_limiter_decisions_total", policy="tpm", result="denied"
        )
        == 1
    )
    assert (
        await metric(
            host.metrics_port, "sluice_limiter_decisions_total", policy="per_key", result="denied"
        )
        == 0
    )


async def test_reconcile_refunds_unused_tokens_once(
    policy_limiter: tuple[limiter_pb2_grpc.LimiterServiceStub, ServiceHost],
) -> None:
    limiter, host = policy_limiter
    granted = await limiter.Acquire(ask(900))
    with pytest.raises(grpc.aio.AioRpcError):
        await limiter.Acquire(ask(500))

    settled = await limiter.Reconcile(
        limiter_pb2.ReconcileRequest(reservation_id=granted.reservation_id, actual_tokens=120)
    )

    assert (settled.applied, settled.reserved_tokens, settled.delta_tokens) == (True, 900, -780)
    assert (await limiter.Acquire(ask(500))).policies[2].remaining == 380
    twice = await limiter.Reconcile(
        limiter_pb2.ReconcileRequest(reservation_id=granted.reservation_id, actual_tokens=120)
    )
    assert not twice.applied
    assert (
        await metric(
            host.metrics_port, "sluice_limiter_reconciled_tokens_total", direction="refunded"
        )
        == 780
    )
    assert (
        await metric(host.metrics_port, "sluice_limiter_reconciliations_total", result="unknown")
        == 1
    )


async def test_a_cut_off_stream_that_ran_over_its_estimate_is_charged(
    policy_limiter: tuple[limiter_pb2_grpc.LimiterServiceStub, ServiceHost], fake_clock: FakeClock
) -> None:
    limiter, _ = policy_limiter
    granted = await limiter.Acquire(ask(500))

    settled = await limiter.Reconcile(
        limiter_pb2.ReconcileRequest(reservation_id=granted.reservation_id, actual_tokens=1200)
    )

    assert settled.delta_tokens == 700
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Acquire(ask(1))  # 200 tokens of debt
    [retry] = details_of(rich_status(caught.value), error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == 20_100_000_000
    fake_clock.advance(20.1)
    assert (await limiter.Acquire(ask(1, key="k1", model="n"))).policies[-1].remaining == 0


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (limiter_pb2.ReconcileRequest(actual_tokens=1), "MISSING_PARAMETER", "reservation_id"),
        (
            limiter_pb2.ReconcileRequest(reservation_id="r", actual_tokens=-1),
            "VALIDATION_ERROR",
            "actual_tokens",
        ),
    ],
)
async def test_bad_reconcile_requests_are_invalid_argument(
    limiter: limiter_pb2_grpc.LimiterServiceStub,
    request_: limiter_pb2.ReconcileRequest,
    code: str,
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Reconcile(request_)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == code
    [bad] = details_of(rich_status(caught.value), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == [field]


async def test_unknown_reservation_changes_nothing(
    limiter: limiter_pb2_grpc.LimiterServiceStub,
) -> None:
    settled = await limiter.Reconcile(
        limiter_pb2.ReconcileRequest(reservation_id="nope", actual_tokens=5)
    )

    assert (settled.applied, settled.reserved_tokens, settled.delta_tokens) == (False, 0, 0)


async def test_a_request_no_policy_matches_is_admitted_unlimited(
    stack: ServiceStack, fake_clock: FakeClock
) -> None:
    host = await stack.start(
        build_limiter(
            limiter_settings(policies=[{"name": "per_user", "scope": "user", "limit": 1}]),
            clock=fake_clock,
        )
    )
    limiter = limiter_pb2_grpc.LimiterServiceStub(stack.channel(host))

    anonymous = [await limiter.Acquire(ask(10)) for _ in range(3)]
    named = limiter_pb2.AcquireRequest(api_key_id="k", user="u1")
    await limiter.Acquire(named)

    assert [(r.limit, list(r.policies)) for r in anonymous] == [(0, [])] * 3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Acquire(named)
    [quota] = details_of(rich_status(caught.value), error_details_pb2.QuotaFailure)
    assert [v.subject for v in quota.violations] == ["user:u1"]


async def test_a_spent_budget_refuses_before_any_limit_and_takes_nothing(
    limiter: limiter_pb2_grpc.LimiterServiceStub, limiter_host: ServiceHost, fake_clock: FakeClock
) -> None:
    period = 3600.0
    budget = limiter_pb2.Budget(limit=2.0, period_s=period, currency="EUR")
    with_budget = acquire("k1")
    with_budget.budget.CopyFrom(budget)

    first = await limiter.Acquire(with_budget)
    assert (first.spent, first.remaining) == (0.0, 2)
    spent = await limiter.Spend(
        limiter_pb2.SpendRequest(api_key_id="k1", amount=1.25, period_s=period)
    )
    assert spent.spent == 1.25
    second = await limiter.Acquire(with_budget)
    assert (second.spent, second.remaining) == (1.25, 1)
    await limiter.Spend(limiter_pb2.SpendRequest(api_key_id="k1", amount=0.75, period_s=period))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Acquire(with_budget)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info.reason == "BUSINESS_RULE_VIOLATION"
    assert dict(info.metadata) == {"budget": "2", "spent": "2", "currency": "EUR"}
    [retry] = details_of(rich_status(caught.value), error_details_pb2.RetryInfo)
    left = period - fake_clock.wall() % period
    assert retry.retry_delay.seconds == pytest.approx(left, abs=1)
    # The refusal took nothing: the request bucket still has its last request, and a
    # call without a budget (or another key) is not affected.
    assert (await limiter.Acquire(acquire("k1"))).remaining == 0
    assert (await limiter.Acquire(with_budget_for("k2", budget))).spent == 0.0
    port = limiter_host.metrics_port
    assert await metric(port, "sluice_limiter_budget_refusals_total") == 1
    assert await metric(port, "sluice_limiter_spend_total") == 2.0

    # The next period starts from nothing (and the bucket has refilled meanwhile).
    fake_clock.advance(left)
    assert (await limiter.Acquire(with_budget)).spent == 0.0


def with_budget_for(key: str, budget: limiter_pb2.Budget) -> limiter_pb2.AcquireRequest:
    request = acquire(key)
    request.budget.CopyFrom(budget)
    return request


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (limiter_pb2.SpendRequest(api_key_id="k", amount=-1, period_s=60), "amount"),
        (limiter_pb2.SpendRequest(api_key_id="k", amount=1, period_s=0), "period_s"),
        (limiter_pb2.SpendRequest(amount=1, period_s=60), "api_key_id"),
    ],
)
async def test_bad_spend_requests_are_refused(
    limiter: limiter_pb2_grpc.LimiterServiceStub, request_: limiter_pb2.SpendRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Spend(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad] = details_of(rich_status(caught.value), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == [field]


async def test_a_bad_budget_is_refused(limiter: limiter_pb2_grpc.LimiterServiceStub) -> None:
    for budget, field in (
        (limiter_pb2.Budget(limit=1, period_s=0), "budget.period_s"),
        (limiter_pb2.Budget(limit=-1, period_s=60), "budget.limit"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await limiter.Acquire(with_budget_for("k1", budget))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [bad] = details_of(rich_status(caught.value), error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == [field]


async def test_a_lease_takes_its_permits_along_with_the_request(
    limiter: limiter_pb2_grpc.LimiterServiceStub, limiter_host: ServiceHost
) -> None:
    plain = await limiter.Acquire(acquire("big"))
    request = acquire("big")
    request.lease_requests = 10

    leased = await limiter.Acquire(request)

    assert (leased.lease.requests, leased.lease.ttl_ms) == (10, 1000)
    assert plain.remaining - leased.remaining == 11
    assert leased.policies[0].remaining == leased.remaining
    assert not plain.HasField("lease")
    port = limiter_host.metrics_port
    assert await metric(port, "sluice_limiter_leases_total") == 1
    assert await metric(port, "sluice_limiter_leased_requests_total") == 10
    # Allowed decisions stay per request: the permits are not decisions yet.
    assert (
        await metric(port, "sluice_limiter_decisions_total", policy="per_key", result="allowed")
        == 2
    )


async def test_no_lease_where_it_would_eat_into_the_headroom(
    limiter: limiter_pb2_grpc.LimiterServiceStub, limiter_host: ServiceHost
) -> None:
    request = acquire("k1")  # a bucket of 3: half must stay free, nothing to lease
    request.lease_requests = 10

    response = await limiter.Acquire(request)

    assert not response.HasField("lease")
    assert response.remaining == 2
    assert await metric(limiter_host.metrics_port, "sluice_limiter_leases_total") == 0


async def test_a_negative_lease_request_is_invalid_argument(
    limiter: limiter_pb2_grpc.LimiterServiceStub,
) -> None:
    request = acquire("big")
    request.lease_requests = -1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limiter.Acquire(request)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad] = details_of(rich_status(caught.value), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["lease_requests"]
    # Nothing was taken.
    assert (await limiter.Acquire(acquire("big"))).remaining == 99


async def test_memory_bound_and_use_are_reported(
    limiter: limiter_pb2_grpc.LimiterServiceStub, limiter_host: ServiceHost
) -> None:
    port = limiter_host.metrics_port
    before = await metric(port, "sluice_limiter_memory_used_bytes")
    await limiter.Acquire(acquire("a-new-key"))
    assert await metric(port, "sluice_limiter_memory_used_bytes") > before
    assert await metric(port, "sluice_limiter_memory_bound_bytes") == 64 * 1024 * 1024
