"""Edge rate limits: Envoy's ratelimit filter asks the limiter's RateLimitService
(limiter/edge.py; docs/envoy.md, "Edge rate limit")."""

from __future__ import annotations

from typing import Any

from sluice.launcher.envoy.names import LIMITER_CLUSTER, seconds
from sluice.launcher.settings import SuiteSettings

_RATE_LIMIT_FILTER = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"


def _route_name(route: dict[str, Any]) -> str:
    """The `route` descriptor value: the route's gRPC prefix (or HTTP path) without slashes."""
    match = route["match"]
    named = route.get("name") or match.get("prefix") or match.get("path") or "/"
    return str(named).strip("/") or "root"


def with_rate_limits(route: dict[str, Any]) -> dict[str, Any]:
    """A routed route with the edge descriptors (see limiter/edge.py); others unchanged.

    Every rule is its own entry so a missing header drops only its own descriptor:
    `generic_key=global` always applies, so a request without an API key is limited too.
    """
    if "route" not in route:
        return route
    rules = [
        {"generic_key": {"descriptor_value": "global"}},
        {"request_headers": {"header_name": "x-api-key", "descriptor_key": "api_key"}},
        {"request_headers": {"header_name": "authorization", "descriptor_key": "api_key"}},
        {"generic_key": {"descriptor_key": "route", "descriptor_value": _route_name(route)}},
    ]
    limited = dict(route)
    limited["route"] = {**route["route"], "rate_limits": [{"actions": [r]} for r in rules]}
    return limited


def rate_limit_filter(settings: SuiteSettings) -> dict[str, Any]:
    """The HTTP ratelimit filter: 429 + x-ratelimit-* headers for HTTP clients,
    RESOURCE_EXHAUSTED for gRPC clients; lets requests pass if the limiter is down
    (unless failure_mode_deny)."""
    limits = settings.envoy.rate_limit
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": _RATE_LIMIT_FILTER,
            "domain": settings.limiter.edge.domain,
            "stage": 0,
            "timeout": seconds(limits.timeout_ms / 1000),
            "failure_mode_deny": limits.failure_mode_deny,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limited_as_resource_exhausted": True,
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": LIMITER_CLUSTER}},
                "transport_api_version": "V3",
            },
        },
    }
