"""A client's tracestate cannot blind monitoring (issue 16 item 2).

Ten sampled requests claiming `tracestate: sluice=r:1e-300` made telemetry's /metrics
answer 500 and GetStats fail INTERNAL for the whole stats window: each span counted as
1e300 calls and the count overflowed its uint64. Here the real router, limiter and
provider export to the real telemetry service, which must stay healthy and count the
requests as at most 1/MIN_SAMPLING_RATIO each.
"""

from __future__ import annotations

import os

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.core.config import MIN_SAMPLING_RATIO
from sluice.core.grpcx.server import ServiceHost
from sluice.router.v1 import router_pb2
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.support import (
    AUTH,
    ServiceStack,
    collect,
    eventually,
    sample_value,
    scrape,
    start_suite,
    tracing_to,
)

GENERATE = "/sluice.router.v1.RouterService/Generate"
HOSTILE = ("r:1e-300", "r:5e-324", "r:0", "r:-1", "r:nan", "r:inf", "r:1e400", "r:x")


def sampled_parent() -> str:
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


async def test_absurd_client_ratios_leave_stats_and_metrics_healthy(
    stack: ServiceStack,
    telemetry_host: ServiceHost,
    telemetry_stub: telemetry_pb2_grpc.TelemetryServiceStub,
) -> None:
    suite = await start_suite(stack, tracing=tracing_to(telemetry_host.port))
    requests = 0
    for claimed in (*HOSTILE, "r:1e-300", "r:1e-300"):
        metadata = (
            *AUTH,
            ("traceparent", sampled_parent()),
            ("tracestate", f"sluice={claimed},other=1"),
        )
        request = router_pb2.GenerateRequest(
            model="default", messages=[common_pb2.Message(role="user", content="hi")]
        )
        events = await collect(suite.router_stub.Generate(request, metadata=metadata))
        assert events[-1].HasField("complete")
        requests += 1

    async def generate_stats() -> telemetry_pb2.OperationStats | None:
        try:
            response = await telemetry_stub.GetStats(telemetry_pb2.GetStatsRequest())
        except grpc.aio.AioRpcError as err:
            pytest.fail(f"GetStats failed: {err.code()} {err.details()}")
        found = [o for o in response.operations if o.operation == GENERATE]
        return found[0] if found else None

    def all_spans_in(op: telemetry_pb2.OperationStats | None) -> bool:
        return op is not None and op.spans == requests

    op = await eventually(generate_stats, all_spans_in, within_s=10)
    assert op is not None and op.spans == requests
    # Four claimed less than the floor (each stands for 1/floor calls); the other six are
    # not ratios and fall back to the router's own 1.0.
    assert op.count == round(4 / MIN_SAMPLING_RATIO) + 6
    text = await scrape(telemetry_host.metrics_port)
    rate = sample_value(text, "sluice_slo_request_rate", {"service": "router", "method": GENERATE})
    assert rate == pytest.approx(op.request_rate)
    graph = await telemetry_stub.GetServiceGraph(telemetry_pb2.GetServiceGraphRequest())
    assert graph.edges
