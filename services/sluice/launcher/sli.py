"""The gateway's service-level indicator, defined once: which RPCs count and which of
their gRPC codes are the service's failures.

Client RPCs only. Health checks (`grpc.health.v1`, asked every second by Envoy and the
kubelet) and reflection are no user's traffic: counted, they would inflate the request
count and availability. Every user of the SLI takes it from here: the SLA report
(launcher/report/sla.py), the canary gates (launcher/rollout/gates.py, rendered into the
Argo Rollouts AnalysisTemplate by launcher/k8s/rollout.py). The Prometheus rules and the
Grafana dashboards are YAML and JSON, so tests/unit/deploy/test_sli.py checks that every
RPC selector in them is the one here.
"""

from __future__ import annotations

SERVER_ERROR_CODES = (
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
)
"""gRPC codes that count against the service (the ones OpenTelemetry marks as server
errors); client errors (INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED...) do not."""

SERVER_ERRORS = "|".join(SERVER_ERROR_CODES)
"""`SERVER_ERROR_CODES` as a PromQL regex, for `code=~"..."`."""

INFRASTRUCTURE_METHODS = "/grpc[.].*"
"""Methods that are no client's: `/grpc.health.v1.Health/*`, `/grpc.reflection.*`."""

CLIENT_RPCS = f'method!~"{INFRASTRUCTURE_METHODS}"'
"""The label matcher that keeps any service's client RPCs only."""

ROUTER_RPCS = f'service="router",{CLIENT_RPCS}'
"""The SLI's selector: the router's client RPCs (every request the gateway answers)."""

ROUTER_UNARY_RPCS = f'{ROUTER_RPCS},method!~".*/(Generate|Converse)"'
"""The router's unary client RPCs, whose duration is a whole answer (the latency SLA);
streams are judged by time to first token instead."""


def is_client_method(method: str) -> bool:
    """`CLIENT_RPCS` for one RPC's method label, for figures read from /metrics."""
    return not method.startswith("/grpc.")
