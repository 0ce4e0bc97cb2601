"""Privacy in the telemetry service: redacting received spans, erasing a user's traces.

Redaction (`privacy.redact_pii`) runs on every received span before it is held, so the
spans of exporters that do not redact themselves (Envoy's) are covered too; the services
also redact before they export (core/telemetry/span_export.py).

Erasure (GDPR Art. 17, the EraseUser RPC) removes every trace with a span whose
`user_id` (or `enduser.id`) attribute is the user's: stored traces and traces still
waiting for their sampling decision. Statistics hold no attributes, so nothing of the
user is left in them. Copies already forwarded to other back ends (`telemetry.forward`)
are out of reach: erase there too (docs/security.md, "Privacy").
"""

from __future__ import annotations

from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace

from sluice.core.privacy import redact

USER_ATTRIBUTES = frozenset({"user_id", "enduser.id"})
"""Span attributes naming the end user (the router's, and OpenTelemetry's convention)."""


def _redact_value(value: otlp_common.AnyValue) -> None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        redacted = redact(value.string_value)
        if redacted != value.string_value:
            value.string_value = redacted
    elif kind == "array_value":
        for item in value.array_value.values:
            _redact_value(item)
    elif kind == "kvlist_value":
        for pair in value.kvlist_value.values:
            _redact_value(pair.value)


def redact_span(span: otlp_trace.Span) -> None:
    """Redact a received span in place: attributes, event attributes, status message."""
    for attribute in span.attributes:
        _redact_value(attribute.value)
    for event in span.events:
        for attribute in event.attributes:
            _redact_value(attribute.value)
    if span.status.message:
        span.status.message = redact(span.status.message)


def names_user(span: otlp_trace.Span, user_id: str) -> bool:
    """Whether the span's user attribute is `user_id`."""
    return any(
        attribute.key in USER_ATTRIBUTES and attribute.value.string_value == user_id
        for attribute in span.attributes
    )
