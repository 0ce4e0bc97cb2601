"""Forwarding kept traces to back ends: OTLP/gRPC, OTLP/HTTP, Zipkin, Azure Monitor.

`build_forwarders` turns the `forward:` settings into one Forwarder per destination
(forwarder.py: buffer, batching, bounded retries, counts) over the Sink of its wire
format (otlp.py, zipkin.py, azure_monitor.py).
"""

from __future__ import annotations

from sluice.core.config import ConfigError
from sluice.core.telemetry.app_insights import ConnectionString, ConnectionStringError
from sluice.telemetry.forward.azure_monitor import AzureMonitorSink
from sluice.telemetry.forward.forwarder import Forwarder, ForwardMetrics, Outcome, Sink
from sluice.telemetry.forward.otlp import OtlpGrpcSink, OtlpHttpSink
from sluice.telemetry.forward.zipkin import ZipkinSink
from sluice.telemetry.settings import ForwardSettings

__all__ = ["ForwardMetrics", "Forwarder", "Outcome", "Sink", "build_forwarders", "sink_for"]


def sink_for(target: ForwardSettings) -> Sink:
    """The Sink speaking `target.protocol`; a bad connection string raises here, at start."""
    match target.protocol:
        case "otlp_grpc":
            return OtlpGrpcSink(
                target.endpoint,
                timeout_s=target.timeout_s,
                backoff_s=(target.backoff_initial_s, target.backoff_max_s),
                headers=target.headers,
            )
        case "otlp_http":
            return OtlpHttpSink(target.endpoint, timeout_s=target.timeout_s, headers=target.headers)
        case "zipkin":
            return ZipkinSink(target.endpoint, timeout_s=target.timeout_s, headers=target.headers)
        case "azure_monitor":
            connection = ConnectionString.load(
                target.connection_string_env, target.connection_string_file
            )
            return AzureMonitorSink(connection, timeout_s=target.timeout_s)


def build_forwarders(targets: list[ForwardSettings], metrics: ForwardMetrics) -> list[Forwarder]:
    """One Forwarder per configured destination; a bad connection string is a ConfigError
    naming the entry, so the service exits at start-up with that message."""
    sinks: list[Sink] = []
    for index, target in enumerate(targets):
        try:
            sinks.append(sink_for(target))
        except ConnectionStringError as err:
            raise ConfigError(f"telemetry.forward.{index}: {err}") from err
    return [
        Forwarder(
            target.name,
            sink,
            metrics=metrics,
            max_buffer_spans=target.max_buffer_spans,
            max_buffer_bytes=target.max_buffer_bytes,
            max_batch_spans=target.max_batch_spans,
            backoff_initial_s=target.backoff_initial_s,
            backoff_max_s=target.backoff_max_s,
            max_attempts=target.max_attempts,
        )
        for target, sink in zip(targets, sinks, strict=True)
    ]
