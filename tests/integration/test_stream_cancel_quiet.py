"""A client that leaves while a server stream is being written is a cancellation, not a
server error: no INTERNAL count, no "unhandled error" log, the RPC recorded CANCELLED."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sluice.common.v1 import common_pb2
from sluice.provider.service import build_server as build_provider
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from tests.support import ServiceStack, eventually, metric, provider_settings

STREAM = "/sluice.provider.v1.ProviderService/Stream"


@pytest.mark.parametrize("round_", range(3))
async def test_leaving_mid_write_is_counted_cancelled_not_internal(
    stack: ServiceStack, caplog: pytest.LogCaptureFixture, round_: int
) -> None:
    # Many small deltas back to back, so the client leaves while the server writes.
    backend: dict[str, object] = {
        "time_to_first_token_ms": 0,
        "tokens_per_second": 50_000,
        "answer_tokens": 30_000,
    }
    provider = await stack.start(build_provider(provider_settings(backend)))
    stub = provider_pb2_grpc.ProviderServiceStub(stack.channel(provider))
    request = provider_pb2.StreamRequest(
        backend="simulated",
        model="m",
        messages=[common_pb2.Message(role="user", content=f"go {round_}")],
        max_tokens=30_000,
    )

    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            call = stub.Stream(request)
            seen = 0
            async for _event in call:
                seen += 1
                if seen == 3:
                    break
            if round_ == 2:
                await asyncio.sleep(0.3)  # the server's writes now wait on flow control
            call.cancel()
        port = provider.metrics_port

        async def cancelled() -> float:
            return await metric(port, "sluice_rpc_requests_total", method=STREAM, code="CANCELLED")

        await eventually(cancelled, lambda n: n == 5)
        await asyncio.sleep(0.1)

    assert await metric(port, "sluice_errors_total", method=STREAM, reason="INTERNAL") == 0
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]
