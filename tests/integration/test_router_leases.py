"""Router and limiter together: requests admitted from leased permits (router/leases.py)."""

from __future__ import annotations

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.core.config import ConfigError
from sluice.router.v1 import router_pb2
from tests.support import (
    AUTH,
    ServiceStack,
    Suite,
    collect,
    kinds,
    metric,
    router_settings,
    start_suite,
)

GENERATE = "/sluice.router.v1.RouterService/Generate"


def request(user: str = "") -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content="hi")],
        max_tokens=3,
        user=user,
    )


async def outcome(suite: Suite, user: str = "") -> str:
    try:
        events = await collect(suite.router_stub.Generate(request(user), metadata=AUTH))
    except grpc.aio.AioRpcError as err:
        return str(err.code().name)
    return kinds(events)[-1]


async def decisions(suite: Suite, result: str) -> float:
    return await metric(
        suite.limiter.metrics_port,
        "sluice_limiter_decisions_total",
        policy="per_key",
        result=result,
    )


async def leased(suite: Suite) -> float:
    return await metric(suite.router.metrics_port, "sluice_router_leased_admissions_total")


async def test_a_busy_subject_is_admitted_from_its_lease_without_limiter_calls(
    stack: ServiceStack,
) -> None:
    suite = await start_suite(stack)  # the default per-key bucket: 1000 burst, 500/s

    results = [await outcome(suite) for _ in range(10)]

    assert results == ["complete"] * 10
    # The first request makes the subject known, the second asks for a lease; the other
    # eight are admitted from it.
    assert await decisions(suite, "allowed") == 2
    assert await leased(suite) == 8
    leases = await metric(suite.limiter.metrics_port, "sluice_limiter_leased_requests_total")
    assert leases == 64


async def test_leases_never_let_a_tight_limit_admit_more(stack: ServiceStack) -> None:
    # 10 requests of burst and next to no refill. The lease may only take what leaves
    # half the bucket free, so: 1 (known) + 1 (asks; 8 left, 3 leased, 5 left) + 3 leased
    # + 5 more one call each, then refusals.
    suite = await start_suite(
        stack, limiter={"per_key": {"capacity": 10, "refill_per_second": 0.001}}
    )

    results = [await outcome(suite) for _ in range(14)]

    assert results == ["complete"] * 10 + ["RESOURCE_EXHAUSTED"] * 4
    assert await leased(suite) == 3
    assert await decisions(suite, "allowed") == 7


async def test_subjects_differing_in_user_do_not_share_a_lease(stack: ServiceStack) -> None:
    suite = await start_suite(stack)

    for user in ("ann", "bob", "cy", "dee"):  # each user seen once: none asks for a lease
        assert await outcome(suite, user) == "complete"
    assert await outcome(suite, "ann") == "complete"  # ann's second request asks
    assert await outcome(suite, "bob") == "complete"  # bob's too: ann's permits are not his
    assert await leased(suite) == 0
    assert await outcome(suite, "ann") == "complete"
    assert await leased(suite) == 1


async def test_a_lease_ask_of_zero_calls_the_limiter_for_every_request(
    stack: ServiceStack,
) -> None:
    suite = await start_suite(stack, router={"limiter_lease_requests": 0})

    for _ in range(5):
        assert await outcome(suite) == "complete"

    assert await leased(suite) == 0
    assert await decisions(suite, "allowed") == 5


async def test_keys_with_a_budget_are_never_leased(stack: ServiceStack) -> None:
    # Every Acquire checks the budget; a leased admission would skip that check.
    suite = await start_suite(
        stack,
        router={
            "budgets": {
                "prices": {"default": {"input_per_million": 1.0, "output_per_million": 1.0}},
                "per_key": {"test": 100.0},
            }
        },
    )

    for _ in range(5):
        assert await outcome(suite) == "complete"

    assert await leased(suite) == 0
    assert await decisions(suite, "allowed") == 5


@pytest.mark.parametrize("lease_requests", [-1, 10_001])
def test_the_lease_ask_is_bounded_in_settings(lease_requests: int) -> None:
    with pytest.raises(ConfigError, match=r"router\.limiter_lease_requests"):
        router_settings("127.0.0.1:1", "127.0.0.1:2", limiter_lease_requests=lease_requests)
