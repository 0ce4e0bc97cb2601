"""Request and response header (gRPC metadata) names Sluice reads or sets, defined once
(the error trailer's name is core/errors.py `HTTP_STATUS_HEADER`, beside its mapping).

gRPC metadata keys and HTTP/1.1 header names are both lower case here: grpc lowers
them itself and the HTTP fronts lower what they read.
"""

from __future__ import annotations

AUTHORIZATION = "authorization"
API_KEY = "x-api-key"
REQUEST_ID = "x-request-id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

FAULT = "x-sluice-fault"
"""Per-request fault injection, honoured only by a provider run with fault_injection on."""
TRACE_ID = "x-sluice-trace-id"
PROVIDER = "x-sluice-provider"
FALLBACK_STEP = "x-sluice-fallback-step"

FORWARDED = frozenset({AUTHORIZATION, API_KEY, REQUEST_ID, TRACEPARENT, TRACESTATE, FAULT})
"""What an HTTP front hands on to the router's pipeline as call metadata."""
