"""Client channels between services: traced, with gRPC's own retry policy."""

from __future__ import annotations

import json

import grpc
from opentelemetry.sdk.trace import TracerProvider

from sluice.core.telemetry.tracing import client_tracing_interceptors


def _service_config(service: str) -> str:
    # Transparent retries of UNAVAILABLE before any response arrived: safe for our
    # internal hops because nothing has been streamed to the client at that point.
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": service}],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            # Caps retries at 10% of calls during an outage (gRPC retry throttling).
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )


def internal_channel(
    target: str, service: str, tracer_provider: TracerProvider | None
) -> grpc.aio.Channel:
    """An insecure loopback channel to another Sluice service."""
    interceptors = client_tracing_interceptors(tracer_provider) if tracer_provider else None
    return grpc.aio.insecure_channel(
        target,
        options=(
            ("grpc.service_config", _service_config(service)),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ),
        interceptors=interceptors,
    )
