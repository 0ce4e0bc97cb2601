"""Names the sections of the bootstrap share: type URLs, clusters, match helpers."""

from __future__ import annotations

from typing import Any

from sluice.router.v1 import router_pb2

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name

ROUTER_CLUSTER = "router"
HTTP_API_CLUSTER = "router_http"
LIMITER_CLUSTER = "limiter"
TELEMETRY_CLUSTER = "telemetry"

TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
H2_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def transcoder_off() -> dict[str, Any]:
    """Per-route config that turns the JSON transcoder off (routes that are not gRPC)."""
    return {TRANSCODER_FILTER: {"@type": FILTER_CONFIG, "disabled": True}}


def method_is(method: str) -> dict[str, Any]:
    """A header matcher on the HTTP method."""
    return {"name": ":method", "string_match": {"exact": method}}


def seconds(value: float) -> str:
    """A protobuf Duration as Envoy's YAML takes it ("1.5s")."""
    return f"{value:g}s"
