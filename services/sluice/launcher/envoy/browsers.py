"""Browsers: gRPC-Web with CORS, and the web page at / (docs/envoy.md, "gRPC-Web")."""

from __future__ import annotations

from typing import Any

from sluice.launcher.envoy.grpc_framing import framing_checked, unary_request_methods
from sluice.launcher.envoy.names import (
    HTTP_API_CLUSTER,
    ROUTER_CLUSTER,
    ROUTER_SERVICE,
    method_is,
    seconds,
    transcoder_off,
)
from sluice.launcher.envoy.retries import retry_policy
from sluice.launcher.settings import SuiteSettings

_CORS_FILTER = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
_CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
_GRPC_WEB_FILTER = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
# What a gRPC-Web client sends, and the response headers its JavaScript must read
# (a trailers-only error carries grpc-status/grpc-message as headers, not a frame).
GRPC_WEB_ALLOW_HEADERS = (
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "authorization",
    "x-api-key",
    "grpc-timeout",
    "traceparent",
    "tracestate",
    "x-request-id",
)
GRPC_WEB_EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id")


def browser_filters() -> list[dict[str, Any]]:
    """CORS (answers preflights, decorates responses of routes with a policy), then
    gRPC-Web (turns application/grpc-web* into gRPC before anything else sees it)."""
    return [
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": _CORS_FILTER}},
        {"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": _GRPC_WEB_FILTER}},
    ]


def _cors_policy(settings: SuiteSettings) -> dict[str, Any]:
    return {
        "@type": _CORS_POLICY,
        "allow_origin_string_match": [
            {"exact": origin} for origin in settings.envoy.cors_allow_origins
        ],
        "allow_methods": "POST, OPTIONS",
        "allow_headers": ",".join(GRPC_WEB_ALLOW_HEADERS),
        "expose_headers": ",".join(GRPC_WEB_EXPOSE_HEADERS),
        "max_age": "600",
        # A preflight from an origin not allowed is answered here (without CORS
        # headers, so the browser refuses), never forwarded to the gRPC server.
        "forward_not_matching_preflights": False,
    }


def grpc_web_routes(settings: SuiteSettings) -> list[dict[str, Any]]:
    """gRPC-Web and its CORS preflight for the router's service.

    The route is chosen from the request as it arrives, before the gRPC-Web filter
    rewrites its content-type to application/grpc, so the gRPC routes (which match
    `grpc: {}`, i.e. application/grpc[+...]) never see gRPC-Web: these routes match the
    gRPC-Web content types (and OPTIONS) themselves.
    """
    prefix = f"/{ROUTER_SERVICE}/"
    per_filter = {
        "envoy.filters.http.cors": _cors_policy(settings),
        **transcoder_off(),
    }
    grpc_web = {"name": "content-type", "string_match": {"prefix": "application/grpc-web"}}
    unary_timeout = seconds(settings.envoy.unary_timeout_s)
    retries = retry_policy(settings)
    return [
        # Methods taking one request message get their body's framing checked; server
        # streams (Generate) have no route timeout.
        *(
            framing_checked(
                {
                    "match": {"path": f"{prefix}{method.name}", "headers": [grpc_web]},
                    "route": {
                        "cluster": ROUTER_CLUSTER,
                        "timeout": "0s" if method.server_streaming else unary_timeout,
                        **retries,
                    },
                    "typed_per_filter_config": per_filter,
                }
            )
            for method in unary_request_methods()
        ),
        {
            "match": {"prefix": prefix, "headers": [grpc_web]},
            "route": {"cluster": ROUTER_CLUSTER, "timeout": unary_timeout, **retries},
            "typed_per_filter_config": per_filter,
        },
        {
            # Preflights are answered by the CORS filter; nothing reaches the router.
            "match": {"prefix": prefix, "headers": [method_is("OPTIONS")]},
            "route": {"cluster": ROUTER_CLUSTER, "timeout": "5s"},
            "typed_per_filter_config": per_filter,
        },
    ]


def web_page_routes(settings: SuiteSettings) -> list[dict[str, Any]]:
    """GET / and /ui/*: the web page, served by the router's HTTP listener; GET /docs
    redirects to the interactive API docs (/ui/docs.html)."""
    if not settings.router.http_api.enabled:
        return []
    # Shared by both routes, so the YAML names them once (an anchor and an alias).
    get = [method_is("GET")]
    disabled = transcoder_off()
    # /docs is the address people type for the interactive API docs; Envoy answers it
    # with a redirect so the page keeps its relative asset paths under /ui/.
    docs = [
        {
            "match": {"path": path, "headers": get},
            "redirect": {"path_redirect": "/ui/docs.html", "response_code": "FOUND"},
            "typed_per_filter_config": disabled,
        }
        for path in ("/docs", "/docs/")
    ]
    return [
        *docs,
        *(
            {
                "match": {**match, "headers": get},
                "route": {"cluster": HTTP_API_CLUSTER, "timeout": "10s", **retry_policy(settings)},
                "typed_per_filter_config": disabled,
            }
            for match in ({"path": "/"}, {"prefix": "/ui/"})
        ),
    ]
