"""LimiterService servicer and the limiter's build_server."""

from __future__ import annotations

import math
import os

from prometheus_client import Counter

from sluice.core.clock import Clock, SystemClock
from sluice.core.errors import (
    FieldViolation,
    MissingParameterError,
    QuotaExceededError,
    QuotaViolation,
    ValidationError,
)
from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.types import ServicerContext
from sluice.limiter.settings import LimiterSettings
from sluice.limiter.token_bucket import TokenBuckets
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc


class LimiterServicer(limiter_pb2_grpc.LimiterServiceServicer):
    """Admits requests against per-API-key token buckets."""

    def __init__(self, buckets: TokenBuckets, host: ServiceHost) -> None:
        self._buckets = buckets
        decisions = Counter(
            "sluice_limiter_decisions",
            "Admission decisions by result (allowed, denied).",
            ["policy", "result"],
            registry=host.registry,
        )
        self._allowed = decisions.labels("per_key", "allowed")
        self._denied = decisions.labels("per_key", "denied")

    async def Acquire(  # noqa: N802 - gRPC method name
        self, request: limiter_pb2.AcquireRequest, context: ServicerContext
    ) -> limiter_pb2.AcquireResponse:
        if not request.api_key_id:
            raise MissingParameterError(
                "api_key_id is required",
                field_violations=[FieldViolation("api_key_id", "must not be empty")],
            )
        negative = [
            FieldViolation(name, "must not be negative")
            for name, value in (("requests", request.requests), ("tokens", request.tokens))
            if value < 0
        ]
        if negative:
            raise ValidationError(
                "request and token counts must not be negative", field_violations=negative
            )
        decision = self._buckets.take(request.api_key_id, float(request.requests or 1))
        if not decision.allowed:
            self._denied.inc()
            retry = None if math.isinf(decision.retry_after_s) else decision.retry_after_s
            raise QuotaExceededError(
                f"request rate limit of {decision.capacity:g} per key exceeded",
                metadata={"policy": "per_key", "limit": f"{decision.capacity:g}"},
                retry_after_s=retry,
                quota_violations=[
                    QuotaViolation(
                        subject=f"api_key:{request.api_key_id}",
                        description=f"at most {decision.capacity:g} requests in a burst",
                    )
                ],
            )
        self._allowed.inc()
        return limiter_pb2.AcquireResponse(
            reservation_id=os.urandom(8).hex(),
            remaining=int(decision.remaining),
            limit=int(decision.capacity),
            reset_after_ms=int(decision.reset_after_s * 1000),
        )


def build_server(settings: LimiterSettings, *, clock: Clock | None = None) -> ServiceHost:
    """Wire the limiter service. Call ``await host.start()`` to bind and serve."""
    host = ServiceHost("limiter", settings)
    buckets = TokenBuckets(
        clock or SystemClock(),
        settings.per_key,
        settings.key_overrides,
        settings.max_tracked_keys,
    )
    limiter_pb2_grpc.add_LimiterServiceServicer_to_server(
        LimiterServicer(buckets, host), host.server
    )
    host.add_service(limiter_pb2.DESCRIPTOR.services_by_name["LimiterService"].full_name)
    return host
