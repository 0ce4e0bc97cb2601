"""Optional OTLP metrics push (core/telemetry/metrics_push.py) to a local OTLP receiver."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.metrics.v1 import metrics_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sluice.core.config import MetricsExportSettings
from sluice.core.telemetry.metrics_push import MetricsPusher

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    async def Export(  # noqa: N802 - gRPC method name
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: object
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    got = Receiver()
    server = grpc.aio.server()
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(got, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield got, f"127.0.0.1:{port}"
    await server.stop(0)


def registry_with_values() -> CollectorRegistry:
    registry = CollectorRegistry()
    requests = Counter("sluice_rpc_requests", "RPCs.", ["method", "code"], registry=registry)
    requests.labels("/r/Complete", "OK").inc(7)
    requests.labels("/r/Complete", "UNAVAILABLE").inc(2)
    Gauge("sluice_router_streams_in_flight", "Streams.", registry=registry).set(3)
    latency = Histogram(
        "sluice_rpc_duration_seconds", "Latency.", ["method"], buckets=[0.1, 1.0], registry=registry
    )
    for value in (0.05, 0.5, 0.7, 5.0):
        latency.labels("/r/Complete").observe(value)
    return registry


async def test_a_push_carries_counters_gauges_and_histograms_as_otlp(
    receiver: tuple[Receiver, str],
) -> None:
    got, endpoint = receiver
    pusher = MetricsPusher(
        registry_with_values(), "sluice-router", MetricsExportSettings(endpoint=endpoint)
    )
    assert await pusher.push()
    await pusher.close()  # pushes the final values once more
    assert len(got.requests) == 2
    (resource_metrics,) = got.requests[0].resource_metrics
    resource = {kv.key: kv.value.string_value for kv in resource_metrics.resource.attributes}
    assert resource == {"service.name": "sluice-router", "service.namespace": "sluice"}
    metrics = {m.name: m for m in resource_metrics.scope_metrics[0].metrics}

    requests = metrics["sluice_rpc_requests_total"]
    assert requests.sum.is_monotonic and requests.sum.aggregation_temporality == CUMULATIVE
    by_code = {
        {kv.key: kv.value.string_value for kv in p.attributes}["code"]: p.as_double
        for p in requests.sum.data_points
    }
    assert by_code == {"OK": 7.0, "UNAVAILABLE": 2.0}
    assert requests.sum.data_points[0].start_time_unix_nano < time.time_ns()

    assert [p.as_double for p in metrics["sluice_router_streams_in_flight"].gauge.data_points] == [
        3.0
    ]

    latency = metrics["sluice_rpc_duration_seconds"].histogram
    assert latency.aggregation_temporality == CUMULATIVE
    (point,) = latency.data_points
    assert list(point.explicit_bounds) == [0.1, 1.0]
    assert list(point.bucket_counts) == [1, 2, 1]  # per bucket, not cumulative
    assert point.count == 4 and point.sum == pytest.approx(6.25)
    assert {kv.key: kv.value.string_value for kv in point.attributes} == {"method": "/r/Complete"}
    # The pusher's own failure counter is a metric like the others.
    assert "sluice_metrics_export_failures_total" in metrics


async def test_pushes_repeat_every_interval(receiver: tuple[Receiver, str]) -> None:
    got, endpoint = receiver
    pusher = MetricsPusher(
        registry_with_values(), "sluice-x", MetricsExportSettings(endpoint=endpoint, interval_s=0.1)
    )
    pusher.start()
    deadline = time.monotonic() + 5
    while len(got.requests) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await pusher.close()


async def test_a_dead_endpoint_fails_fast_and_is_counted() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    registry = registry_with_values()
    pusher = MetricsPusher(
        registry, "sluice-x", MetricsExportSettings(endpoint=dead, timeout_s=0.3)
    )
    began = time.monotonic()
    assert not await pusher.push()
    assert time.monotonic() - began < 2.0
    assert registry.get_sample_value("sluice_metrics_export_failures_total") == 1
    await pusher.close()
    assert registry.get_sample_value("sluice_metrics_export_failures_total") == 2
