"""Builders of OTLP spans, and of the tail sampler that holds them, for telemetry unit tests."""

from __future__ import annotations

import os

from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace

from sluice.telemetry.sampling import StoredSpan, TailSampler
from tests.support import FakeClock

SCOPE = otlp_common.InstrumentationScope(name="test")

KIND = {
    "server": otlp_trace.Span.SPAN_KIND_SERVER,
    "client": otlp_trace.Span.SPAN_KIND_CLIENT,
    "internal": otlp_trace.Span.SPAN_KIND_INTERNAL,
}


def resource(service: str) -> resource_pb2.Resource:
    return resource_pb2.Resource(
        attributes=[
            otlp_common.KeyValue(
                key="service.name", value=otlp_common.AnyValue(string_value=service)
            )
        ]
    )


def attr(key: str, value: str | int | float) -> otlp_common.KeyValue:
    if isinstance(value, str):
        return otlp_common.KeyValue(key=key, value=otlp_common.AnyValue(string_value=value))
    if isinstance(value, int):
        return otlp_common.KeyValue(key=key, value=otlp_common.AnyValue(int_value=value))
    return otlp_common.KeyValue(key=key, value=otlp_common.AnyValue(double_value=value))


def stored(
    service: str,
    *,
    trace_id: bytes,
    span_id: bytes | None = None,
    parent: bytes = b"",
    name: str = "op",
    kind: str = "server",
    start_ns: int = 1_000,
    end_ns: int = 2_000,
    error: bool = False,
    attributes: dict[str, str | int | float] | None = None,
) -> StoredSpan:
    span = otlp_trace.Span(
        trace_id=trace_id,
        span_id=span_id or os.urandom(8),
        parent_span_id=parent,
        name=name,
        kind=KIND[kind],
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns,
        attributes=[attr(k, v) for k, v in (attributes or {}).items()],
    )
    if error:
        span.status.code = otlp_trace.Status.STATUS_CODE_ERROR
    return StoredSpan(service, span, resource(service), SCOPE)


def sampler(clock: FakeClock, **overrides: float) -> TailSampler:
    """A tail sampler with small bounds and a 2 s wait; `overrides` set any of them."""
    values: dict[str, float] = {
        "decision_wait_s": 2.0,
        "keep_ratio": 0.0,
        "slow_threshold_ms": 1_000,
        "max_pending_traces": 100,
        "max_spans_per_trace": 100,
        "max_pending_bytes": 64 * 1024 * 1024,
    }
    values.update(overrides)
    return TailSampler(
        clock=clock,
        decision_wait_s=values["decision_wait_s"],
        keep_ratio=values["keep_ratio"],
        slow_threshold_ms=values["slow_threshold_ms"],
        max_pending_traces=int(values["max_pending_traces"]),
        max_spans_per_trace=int(values["max_spans_per_trace"]),
        max_pending_bytes=int(values["max_pending_bytes"]),
    )
