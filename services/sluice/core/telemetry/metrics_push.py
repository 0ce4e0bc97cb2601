"""Optional push of a service's Prometheus metrics, for stacks without Prometheus: over
OTLP/gRPC (below) or to Azure Monitor (metrics_azure.py), chosen by `protocol`.

The same registry /metrics serves is collected every `interval_s` and sent as one OTLP
ExportMetricsServiceRequest to an OTLP/gRPC endpoint (an OpenTelemetry Collector,
Grafana Mimir/Alloy, Azure Monitor through a collector...). Counters become monotonic
cumulative Sums, gauges Gauges, histograms cumulative explicit-bucket Histograms (OTLP
bucket counts are per bucket, Prometheus' are cumulative: they are differenced);
summaries and info metrics are not sent. A failed push is counted and the next interval
simply sends the then-current totals: cumulative values lose nothing in between. Pushes
run one after another in their own task, so a slow or failing receiver delays only the
next push, never serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric

from sluice.core.config import ConfigError, MetricsExportSettings
from sluice.core.telemetry.app_insights import ConnectionString, ConnectionStringError
from sluice.core.telemetry.metrics_azure import AzureMetricsSink

log = logging.getLogger(__name__)
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


def _attributes(labels: dict[str, str]) -> list[common_pb2.KeyValue]:
    return [
        common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
        for key, value in sorted(labels.items())
    ]


def _number(
    family: Metric, suffix: str, start_ns: int, now_ns: int
) -> list[metrics_pb2.NumberDataPoint]:
    return [
        metrics_pb2.NumberDataPoint(
            attributes=_attributes(sample.labels),
            start_time_unix_nano=start_ns,
            time_unix_nano=now_ns,
            as_double=sample.value,
        )
        for sample in family.samples
        if sample.name == family.name + suffix
    ]


@dataclass
class _Series:
    """One labelled histogram series as Prometheus exposes it."""

    buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative)
    count: float = 0.0
    total: float = 0.0


def _histogram(family: Metric, start_ns: int, now_ns: int) -> list[metrics_pb2.HistogramDataPoint]:
    series: dict[tuple[tuple[str, str], ...], _Series] = {}
    for sample in family.samples:
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        one = series.setdefault(labels, _Series())
        if sample.name.endswith("_bucket"):
            one.buckets.append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            one.count = sample.value
        elif sample.name.endswith("_sum"):
            one.total = sample.value
    points = []
    for labels, one in series.items():
        buckets = sorted(one.buckets)
        cumulative = [count for _, count in buckets]
        below = [0.0, *cumulative[:-1]]
        points.append(
            metrics_pb2.HistogramDataPoint(
                attributes=_attributes(dict(labels)),
                start_time_unix_nano=start_ns,
                time_unix_nano=now_ns,
                count=int(one.count),
                sum=one.total,
                explicit_bounds=[le for le, _ in buckets if not math.isinf(le)],
                bucket_counts=[int(c - b) for c, b in zip(cumulative, below, strict=True)],
            )
        )
    return points


def export_request(
    registry: CollectorRegistry, service: str, start_ns: int, now_ns: int
) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """The registry's current values as one OTLP metrics export."""
    scope = metrics_pb2.ScopeMetrics(scope=common_pb2.InstrumentationScope(name="sluice"))
    for family in registry.collect():
        metric = metrics_pb2.Metric(name=family.name, description=family.documentation)
        if family.type == "counter":
            metric.name = family.name + "_total"
            metric.sum.is_monotonic = True
            metric.sum.aggregation_temporality = CUMULATIVE
            metric.sum.data_points.extend(_number(family, "_total", start_ns, now_ns))
        elif family.type == "gauge":
            metric.gauge.data_points.extend(_number(family, "", start_ns, now_ns))
        elif family.type == "histogram":
            metric.histogram.aggregation_temporality = CUMULATIVE
            metric.histogram.data_points.extend(_histogram(family, start_ns, now_ns))
        else:
            continue
        scope.metrics.append(metric)
    resource = resource_pb2.Resource(
        attributes=_attributes({"service.name": service, "service.namespace": "sluice"})
    )
    return metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[metrics_pb2.ResourceMetrics(resource=resource, scope_metrics=[scope])]
    )


class MetricsSink(Protocol):
    """One destination's wire format and transport."""

    async def send(self, registry: CollectorRegistry, *, attempts: int | None = None) -> str | None:
        """Push the current values (at most `attempts` tries when given); None when
        accepted, else why the push was dropped."""

    async def close(self) -> None:
        """Release connections."""


class OtlpMetricsSink:
    """One OTLP/gRPC Export per push (cumulative values: the next push makes up a miss)."""

    def __init__(self, endpoint: str, service: str, *, timeout_s: float) -> None:
        self._service = service
        self._timeout_s = timeout_s
        self._start_ns = time.time_ns()
        # The operator's own OTLP collector (docs/observability.md), often a same-host
        # agent; a TLS setting for it is not built yet, so this stays plaintext.
        self._channel = grpc.aio.insecure_channel(  # nosemgrep: sluice-plaintext-grpc-channel
            endpoint,
        )
        self._stub = metrics_service_pb2_grpc.MetricsServiceStub(self._channel)

    async def send(self, registry: CollectorRegistry, *, attempts: int | None = None) -> str | None:
        """One Export call."""
        request = export_request(registry, self._service, self._start_ns, time.time_ns())
        try:
            await self._stub.Export(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            return str(err.code())
        return None

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()


def sink_for(service: str, settings: MetricsExportSettings) -> MetricsSink:
    """The sink of `settings.protocol`; a bad connection string is a ConfigError."""
    if settings.protocol == "otlp_grpc":
        return OtlpMetricsSink(settings.endpoint, service, timeout_s=settings.timeout_s)
    try:
        connection = ConnectionString.load(
            settings.connection_string_env, settings.connection_string_file
        )
    except ConnectionStringError as err:
        raise ConfigError(f"metrics_export: {err}") from err
    return AzureMetricsSink(
        connection,
        service,
        timeout_s=settings.timeout_s,
        max_attempts=settings.max_attempts,
        backoff_s=(settings.backoff_initial_s, settings.backoff_max_s),
    )


class MetricsPusher:
    """Pushes the registry every interval from a task of the service's event loop."""

    def __init__(
        self, registry: CollectorRegistry, service: str, settings: MetricsExportSettings
    ) -> None:
        self._registry = registry
        self._settings = settings
        source = settings.connection_string_file or settings.connection_string_env
        azure = f"azure_monitor:{source}"
        self._destination = settings.endpoint if settings.protocol == "otlp_grpc" else azure
        self._sink = sink_for(service, settings)
        self._failures = Counter(
            "sluice_metrics_export_failures",
            "Metric pushes dropped (the next accepted one still carries counters' gains).",
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None

    async def push(self, *, attempts: int | None = None) -> bool:
        """One push of the current values; False (and counted) when it was dropped."""
        error = await self._sink.send(self._registry, attempts=attempts)
        if error is not None:
            self._failures.inc()
            log.warning("metrics push to %s failed: %s", self._destination, error)
            return False
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval_s)
            await self.push()

    def start(self) -> None:
        """Start pushing every interval."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-push")

    async def close(self) -> None:
        """Stop, push the final values once (one attempt, so shutdown stays bounded), close."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.push(attempts=1)
        await self._sink.close()
