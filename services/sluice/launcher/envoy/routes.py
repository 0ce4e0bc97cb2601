"""The edge's routes, in match order: the OpenAPI document, the HTTP API, the web page,
gRPC-Web, the WebSocket bridge, then gRPC, then a JSON 404 for anything else."""

from __future__ import annotations

from typing import Any

from sluice.launcher.envoy.browsers import grpc_web_routes, web_page_routes
from sluice.launcher.envoy.descriptor import descriptor_path
from sluice.launcher.envoy.grpc_framing import framing_checked, unary_request_methods
from sluice.launcher.envoy.hardening import body_limit
from sluice.launcher.envoy.names import (
    HTTP_API_CLUSTER,
    ROUTER_CLUSTER,
    ROUTER_SERVICE,
    method_is,
    seconds,
    transcoder_off,
)
from sluice.launcher.envoy.rate_limits import with_rate_limits
from sluice.launcher.envoy.retries import retry_policy
from sluice.launcher.openapi import render_openapi_json
from sluice.launcher.settings import SuiteSettings

_HTTP_API_ROUTES = (("/v1/chat/completions", "POST"), ("/v1/models", "GET"))
_FEEDBACK_ROUTE = ("/v1/feedback", "POST")
"""Feedback on an answer (router/feedback.py), when `router.feedback.enabled`."""


def _grpc_route(prefix: str, timeout: str, retries: dict[str, Any]) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix, "grpc": {}},
        "route": {"cluster": ROUTER_CLUSTER, "timeout": timeout, **retries},
    }


def _unary_request_routes(settings: SuiteSettings, retries: dict[str, Any]) -> list[dict[str, Any]]:
    """One route per router method taking one request message, its body's framing checked
    (grpc_framing.py). Server streams (Generate) run as long as they produce; idle ones are
    cut by stream_idle_timeout (the default route timeout would cut them: docs/envoy.md,
    "Transcoding")."""
    unary_timeout = seconds(settings.envoy.unary_timeout_s)
    return [
        framing_checked(
            {
                "match": {"path": f"/{ROUTER_SERVICE}/{method.name}", "grpc": {}},
                "route": {
                    "cluster": ROUTER_CLUSTER,
                    "timeout": "0s" if method.server_streaming else unary_timeout,
                    **retries,
                },
            }
        )
        for method in unary_request_methods()
    ]


def _http_api_routes(settings: SuiteSettings) -> list[dict[str, Any]]:
    """Plain HTTP routes to the router's HTTP listener, past the transcoder."""
    if not settings.router.http_api.enabled:
        return []
    paths = [*_HTTP_API_ROUTES]
    if settings.router.feedback.enabled:
        paths.append(_FEEDBACK_ROUTE)
    return [
        {
            # Other methods fall through to the catch-all 404 (JSON, like every local reply).
            "match": {"path": path, "headers": [method_is(method)]},
            # Streams run as long as they produce; stream_idle_timeout cuts silent ones.
            "route": {"cluster": HTTP_API_CLUSTER, "timeout": "0s", **retry_policy(settings)},
            "typed_per_filter_config": {
                **transcoder_off(),
                **body_limit(settings.envoy.max_request_bytes),
            },
        }
        for path, method in paths
    ]


def _websocket_routes(settings: SuiteSettings) -> list[dict[str, Any]]:
    """GET /v1/ws upgraded to a WebSocket on the router's HTTP listener (Converse bridge,
    router/websocket_bridge.py). Only this route allows the upgrade. The router closes
    idle sockets itself; Envoy's stream_idle_timeout is the backstop."""
    router = settings.router
    if not (router.http_api.enabled and router.converse.websocket_enabled):
        return []
    return [
        {
            "match": {"path": "/v1/ws", "headers": [method_is("GET")]},
            "route": {
                "cluster": HTTP_API_CLUSTER,
                "timeout": "0s",
                "upgrade_configs": [{"upgrade_type": "websocket"}],
            },
            "typed_per_filter_config": transcoder_off(),
        }
    ]


def _openapi_route() -> dict[str, Any]:
    """GET /openapi.json: the HTTP surface's OpenAPI, generated from the contract (the
    local descriptor image: the path Envoy is given may be one only it can see)."""
    return {
        "match": {"path": "/openapi.json", "headers": [method_is("GET")]},
        "direct_response": {
            "status": 200,
            "body": {"inline_string": render_openapi_json(descriptor_path())},
        },
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": transcoder_off(),
    }


def routes(settings: SuiteSettings) -> list[dict[str, Any]]:
    """Every route of the edge's one virtual host, with rate limits when they are on."""
    retries = retry_policy(settings)
    found = [
        _openapi_route(),
        *_http_api_routes(settings),
        *web_page_routes(settings),
        *grpc_web_routes(settings),
        *_websocket_routes(settings),
        *_unary_request_routes(settings, retries),
        # Bidirectional: never buffered, no route timeout (as Generate above).
        _grpc_route(f"/{ROUTER_SERVICE}/Converse", "0s", retries),
        _grpc_route(f"/{ROUTER_SERVICE}/", seconds(settings.envoy.unary_timeout_s), retries),
        _grpc_route("/grpc.health.v1.Health/", "5s", retries),
        _grpc_route("/grpc.reflection.v1alpha.ServerReflection/", "0s", retries),
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": "no such route"}},
        },
    ]
    if settings.envoy.rate_limit.enabled:
        found = [with_rate_limits(route) for route in found]
    return found
