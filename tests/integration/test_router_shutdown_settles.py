"""A router stopping right after a stream still sends its spend and reconciliation
(issue 16 item 8: the tasks were not awaited, so budget spend could be lost)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sluice.common.v1 import common_pb2
from sluice.limiter.service import LimiterServicer
from sluice.limiter.v1 import limiter_pb2
from sluice.router.v1 import router_pb2
from tests.support import API_KEY_ID, AUTH, ServiceStack, collect, start_suite

PRICE = {"input_per_million": 1_000_000.0, "output_per_million": 1_000_000.0}


async def test_spend_sent_as_a_stream_ends_survives_an_immediate_stop(
    stack: ServiceStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real limiter, answering Spend slowly (a busy store): still in flight at the stop.
    spend = LimiterServicer.Spend

    async def slow_spend(self: LimiterServicer, request: Any, context: Any) -> Any:
        await asyncio.sleep(0.15)  # within the router's limiter_timeout_ms (250)
        return await spend(self, request, context)

    monkeypatch.setattr(LimiterServicer, "Spend", slow_spend)
    suite = await start_suite(
        stack,
        router={"budgets": {"prices": {"default": PRICE}, "per_key": {API_KEY_ID: 1e9}}},
    )
    request = router_pb2.GenerateRequest(
        model="default", messages=[common_pb2.Message(role="user", content="hello")]
    )
    events = await collect(suite.router_stub.Generate(request, metadata=AUTH, timeout=20))
    usage = events[-1].complete.usage
    await stack.stop(suite.router)  # at once: the spend is still in flight

    spent = await suite.limiter_stub.Spend(
        limiter_pb2.SpendRequest(api_key_id=API_KEY_ID, amount=0.0, period_s=86_400.0)
    )
    assert spent.spent == usage.input_tokens + usage.output_tokens
