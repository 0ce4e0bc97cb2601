"""The telemetry service forwarding to four destinations at once over their real formats.

OTLP/gRPC (another telemetry service), OTLP/HTTP, Zipkin and Application Insights
receivers (tests/unit/telemetry/receivers.py) all get every kept trace while a fifth
destination is slow and a sixth answers 503 forever: Export keeps answering at once,
and /metrics counts each destination's results on its own.
"""

from __future__ import annotations

import functools
import os
import time

import pytest

from sluice.telemetry.v1 import telemetry_pb2
from tests.integration.test_telemetry import export_request
from tests.integration.test_telemetry_pipeline import span, start, stubs
from tests.support import ServiceStack, eventually, metric
from tests.unit.telemetry.receivers import (
    Reply,
    otlp_request,
    start_receiver,
    track_envelopes,
    zipkin_spans,
)

IKEY = "00000000-0000-0000-0000-00000000abcd"


async def test_every_destination_gets_the_traces_while_others_fail(
    stack: ServiceStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    otlp_http = await start_receiver("/v1/traces")
    zipkin = await start_receiver("/api/v2/spans")
    azure = await start_receiver(
        "/v2.1/track", ok_body=b'{"itemsReceived":1,"itemsAccepted":1,"errors":[]}'
    )
    slow = await start_receiver("/api/v2/spans")
    slow.default = Reply(202, delay_s=10.0)
    unavailable = await start_receiver("/v1/traces")
    unavailable.default = Reply(503)
    receivers = [otlp_http, zipkin, azure, slow, unavailable]
    monkeypatch.setenv(
        "SLUICE_TEST_AI",
        f"InstrumentationKey={IKEY};IngestionEndpoint={azure.url.removesuffix('/v2.1/track')}",
    )
    fast_retry = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "max_attempts": 3}
    try:
        downstream = await start(stack)
        upstream = await start(
            stack,
            forward=[
                {"endpoint": f"127.0.0.1:{downstream.port}"},
                {"protocol": "otlp_http", "endpoint": otlp_http.url},
                {"protocol": "zipkin", "endpoint": zipkin.url},
                {"protocol": "azure_monitor", "connection_string_env": "SLUICE_TEST_AI"},
                {"protocol": "zipkin", "endpoint": slow.url, "timeout_s": 0.3, **fast_retry},
                {"protocol": "otlp_http", "endpoint": unavailable.url, **fast_retry},
            ],
        )
        receiver, _ = stubs(stack, upstream)
        trace_ids = [os.urandom(16) for _ in range(5)]
        slowest = 0.0
        for trace_id in trace_ids:
            began = time.perf_counter()
            await receiver.Export(export_request("router", span(trace_id)), timeout=2)
            slowest = max(slowest, time.perf_counter() - began)
        assert slowest < 0.5

        _, down_queries = stubs(stack, downstream)

        async def downstream_ids() -> set[str]:
            response = await down_queries.SearchTraces(telemetry_pb2.SearchTracesRequest())
            return {t.trace_id for t in response.traces}

        expected = {t.hex() for t in trace_ids}
        assert await eventually(downstream_ids, lambda ids: ids == expected, within_s=5) == expected

        async def ids_at(
            receiver_requests: list[tuple[dict[str, str], bytes]], kind: str
        ) -> set[str]:
            found: set[str] = set()
            for _, body in receiver_requests:
                if kind == "otlp":
                    request = otlp_request(body)
                    found |= {
                        s.trace_id.hex()
                        for r in request.resource_spans
                        for ss in r.scope_spans
                        for s in ss.spans
                    }
                elif kind == "zipkin":
                    found |= {s["traceId"] for s in zipkin_spans(body)}
                else:
                    found |= {e["tags"]["ai.operation.id"] for e in track_envelopes(body)}
            return found

        for got, kind in ((otlp_http, "otlp"), (zipkin, "zipkin"), (azure, "azure")):
            probe = functools.partial(ids_at, got.requests, kind)
            assert await eventually(probe, lambda ids: ids == expected, within_s=5) == expected

        port = upstream.metrics_port
        failed = await eventually(
            lambda: metric(
                port,
                "sluice_telemetry_forwarded_spans_total",
                endpoint=unavailable.url,
                result="failed",
            ),
            lambda value: value == 5,
            within_s=5,
        )
        assert failed == 5
        assert len(unavailable.requests) <= 3 * 5  # at most max_attempts per batch
        assert (
            await metric(
                port, "sluice_telemetry_forwarded_spans_total", endpoint=zipkin.url, result="sent"
            )
            == 5
        )
        assert (
            await metric(
                port,
                "sluice_telemetry_forwarded_spans_total",
                endpoint="azure_monitor:SLUICE_TEST_AI",
                result="sent",
            )
            == 5
        )
        assert await eventually(
            lambda: metric(
                port, "sluice_telemetry_forwarded_spans_total", endpoint=slow.url, result="failed"
            ),
            lambda value: value >= 1,
            within_s=5,
        )
    finally:
        for item in receivers:
            await item.stop()
