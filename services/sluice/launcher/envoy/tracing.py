"""Envoy's OpenTelemetry tracer (docs/observability.md)."""

from __future__ import annotations

from typing import Any

from sluice.launcher.envoy.names import TELEMETRY_CLUSTER
from sluice.launcher.settings import SuiteSettings

_OTEL_TRACER = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"


def tracing(settings: SuiteSettings) -> dict[str, Any]:
    """Joins an incoming W3C traceparent or starts a trace (sampled at the suite's head
    ratio), and exports OTLP/gRPC to the telemetry service."""
    return {
        "random_sampling": {"value": settings.router.tracing.sample_ratio * 100},
        "spawn_upstream_span": True,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _OTEL_TRACER,
                # Envoy does not retry a failed export on its own: a batch sent before
                # the telemetry service listens (containers of a pod start in parallel)
                # or while it restarts was dropped. Retried here, within the timeout.
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": TELEMETRY_CLUSTER},
                    "timeout": "5s",
                    "retry_policy": {
                        "retry_back_off": {"base_interval": "0.25s", "max_interval": "1s"},
                        "num_retries": 5,
                        "retry_on": "connect-failure,refused-stream,unavailable,reset",
                    },
                },
                "service_name": "sluice-envoy",
            },
        },
    }


def flush_runtime() -> dict[str, Any]:
    """The tracer exports every 5 s (or per 5 spans) by default: batch up to 64 spans,
    at least once a second, like the services' exporters."""
    return {
        "layers": [
            {
                "name": "static",
                "static_layer": {
                    "tracing.opentelemetry.flush_interval_ms": 1000,
                    "tracing.opentelemetry.min_flush_spans": 64,
                },
            }
        ]
    }
