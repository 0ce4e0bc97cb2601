"""Renders the Envoy front's configuration from the suite's settings.

Nothing here is hand-synchronised with the services: ports, the router's service
name and the transcoder's descriptor all come from settings and gen/. The committed
`deploy/envoy/envoy.yaml` is this renderer's output for the default settings (a test
keeps them equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluice.launcher.settings import SuiteSettings
from sluice.router.v1 import router_pb2

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"  # noqa: E501
_TRANSCODER = (
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
)
_ROUTER_FILTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_H2_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
DOMAIN = "sluice.dev"
_OTEL_TRACER = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
TELEMETRY_CLUSTER = "telemetry"

# Envoy's own replies, rewritten into the google.rpc.Status JSON shape our services
# produce through the transcoder: {"code": <gRPC code>, "message": ..., "details": [...]}.
# (HTTP status, gRPC code, reason)
_LOCAL_REPLIES: tuple[tuple[int, int, str], ...] = (
    (400, 3, "INVALID_INPUT"),
    (404, 12, "UNSUPPORTED_OPERATION"),
    (405, 12, "UNSUPPORTED_OPERATION"),
    (408, 4, "DEADLINE_EXCEEDED"),
    (413, 3, "INVALID_INPUT"),
    (429, 8, "QUOTA_EXCEEDED"),
    (431, 3, "INVALID_INPUT"),
    (502, 14, "NETWORK_FAILURE"),
    (503, 14, "SERVICE_UNAVAILABLE"),
    (504, 4, "DEADLINE_EXCEEDED"),
)


def descriptor_path() -> Path:
    """The compiled contract image (gen/sluice.binpb in a checkout, packaged in a wheel)."""
    from sluice.common.v1 import common_pb2  # noqa: PLC0415 - locates gen/

    stub = Path(common_pb2.__file__).resolve()
    for candidate in (
        stub.parents[3] / "sluice.binpb",
        stub.parents[2] / "_descriptors" / "sluice.binpb",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("sluice.binpb not found; run `make gen`")


def _status_body(grpc_code: int, reason: str) -> dict[str, Any]:
    return {
        "json_format": {
            "code": grpc_code,
            "message": "%LOCAL_REPLY_BODY%",
            "details": [{"@type": _ERROR_INFO, "reason": reason, "domain": DOMAIN}],
        },
        "json_format_options": {"sort_properties": False},
    }


def _local_reply_config() -> dict[str, Any]:
    mappers = [
        {
            "filter": {
                "status_code_filter": {
                    "comparison": {
                        "op": "EQ",
                        "value": {
                            "default_value": http,
                            "runtime_key": f"sluice.local_reply.{http}",
                        },
                    }
                }
            },
            "body_format_override": _status_body(code, reason),
        }
        for http, code, reason in _LOCAL_REPLIES
    ]
    # Successful direct responses (GET /openapi.json) keep their own body.
    passthrough = {
        "filter": {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {"default_value": 200, "runtime_key": "sluice.local_reply.200"},
                }
            }
        },
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }
    return {"mappers": [passthrough, *mappers], "body_format": _status_body(13, "INTERNAL")}


def _upstream_cluster(
    name: str, host: str, port: int, health_service: str, interval_ms: int
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _H2_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "max_concurrent_streams": 10_000,
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": f"{interval_ms / 1000:g}s",
                # Without this the second check waits ~60 s after start (ENVOY-FACTS).
                "no_traffic_interval": f"{interval_ms / 1000:g}s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": health_service},
            }
        ],
        # Never send traffic to a host that fails its health check (no panic routing).
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
    }


def _telemetry_cluster(endpoint: str) -> dict[str, Any]:
    """HTTP/2 cluster of the OTLP/gRPC endpoint Envoy's tracer exports to."""
    host, _, port = endpoint.rpartition(":")
    return {
        "name": TELEMETRY_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _H2_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": TELEMETRY_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": host.strip("[]") or "127.0.0.1",
                                        "port_value": int(port),
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def _tracing(settings: SuiteSettings) -> dict[str, Any]:
    """Envoy's OpenTelemetry tracer: joins an incoming W3C traceparent or starts a trace
    (sampled at the suite's head ratio), and exports OTLP/gRPC to the telemetry service."""
    return {
        "random_sampling": {"value": settings.router.tracing.sample_ratio * 100},
        "spawn_upstream_span": True,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _OTEL_TRACER,
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": TELEMETRY_CLUSTER},
                    "timeout": "1s",
                },
                "service_name": "sluice-envoy",
            },
        },
    }


def _grpc_route(prefix: str, cluster: str, timeout: str) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix, "grpc": {}},
        "route": {"cluster": cluster, "timeout": timeout},
    }


def render(settings: SuiteSettings, descriptor: Path) -> dict[str, Any]:
    """The Envoy bootstrap as a dict."""
    envoy = settings.envoy
    router = settings.router.server
    unary_timeout = f"{envoy.unary_timeout_s:g}s"
    routes = [
        _openapi_route(),
        *_http_api_routes(settings),
        *_web_page_routes(settings),
        *_grpc_web_routes(settings),
        *_websocket_routes(settings),
        # Streams run as long as they produce; idle ones are cut by stream_idle_timeout.
        _grpc_route(f"/{ROUTER_SERVICE}/Generate", "router", "0s"),
        _grpc_route(f"/{ROUTER_SERVICE}/Converse", "router", "0s"),
        _grpc_route(f"/{ROUTER_SERVICE}/", "router", unary_timeout),
        _grpc_route("/grpc.health.v1.Health/", "router", "5s"),
        _grpc_route("/grpc.reflection.v1alpha.ServerReflection/", "router", "0s"),
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": "no such route"}},
        },
    ]
    if envoy.rate_limit.enabled:
        routes = [_with_rate_limits(route) for route in routes]
    transcoder = {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": _TRANSCODER,
            "proto_descriptor": str(descriptor),
            "services": [ROUTER_SERVICE],
            "print_options": {
                "add_whitespace": False,
                "always_print_primitive_fields": True,
                "preserve_proto_field_names": True,
                "stream_sse_style_delimited": True,
            },
            "convert_grpc_status": True,
            "max_request_body_size": envoy.max_request_bytes,
            "request_validation_options": {
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
            },
        },
    }
    connection_manager = {
        "@type": _HCM,
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "stream_idle_timeout": f"{envoy.stream_idle_timeout_s:g}s",
        **_client_limits(settings),
        "local_reply_config": _local_reply_config(),
        "route_config": {
            "name": "edge",
            # /openapi.json is a direct response bigger than the 4 KiB default.
            "max_direct_response_body_size_bytes": _MAX_DIRECT_RESPONSE,
            "virtual_hosts": [{"name": "sluice", "domains": ["*"], "routes": routes}],
        },
        **({"tracing": _tracing(settings)} if settings.router.tracing.enabled else {}),
        "http_filters": [
            _error_status_filter(),
            *_browser_filters(),
            _body_limit_filter(),
            transcoder,
            # After the transcoder: JSON requests are limited by the gRPC route they map to.
            *([_rate_limit_filter(settings)] if envoy.rate_limit.enabled else []),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_FILTER}},
        ],
    }
    return {
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": envoy.max_connections,
                    },
                }
            ]
        },
        "admin": {
            "address": {"socket_address": {"address": envoy.host, "port_value": envoy.admin_port}}
        },
        # Envoy's OpenTelemetry tracer exports every 5 s (or per 5 spans) by default:
        # batch up to 64 spans, at least once a second, like the services' exporters.
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        "tracing.opentelemetry.flush_interval_ms": 1000,
                        "tracing.opentelemetry.min_flush_spans": 64,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {
                        "socket_address": {"address": envoy.host, "port_value": envoy.port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ],
                            **_tls_transport_socket(settings),
                        }
                    ],
                }
            ],
            "clusters": [
                _upstream_cluster(
                    "router",
                    router.host,
                    router.port,
                    ROUTER_SERVICE,
                    envoy.health_check_interval_ms,
                ),
                *_http_api_clusters(settings),
                *([_limiter_cluster(settings)] if envoy.rate_limit.enabled else []),
                *(
                    [_telemetry_cluster(settings.router.tracing.endpoint)]
                    if settings.router.tracing.enabled
                    else []
                ),
            ],
        },
    }


# -- edge hardening: client limits, body limits, TLS ----------------------------------

_BUFFER_FILTER = "envoy.filters.http.buffer"
_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_BUFFER_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def _client_limits(settings: SuiteSettings) -> dict[str, Any]:
    """Connection manager fields bounding what one client may send or hold open."""
    limits = settings.envoy.limits
    return {
        "request_headers_timeout": f"{limits.request_headers_timeout_s:g}s",
        "common_http_protocol_options": {
            "idle_timeout": f"{limits.idle_timeout_s:g}s",
            "max_headers_count": limits.max_headers_count,
        },
        "http2_protocol_options": {"max_concurrent_streams": limits.max_concurrent_streams},
        "max_request_headers_kb": limits.max_request_headers_kb,
    }


def _body_limit_filter() -> dict[str, Any]:
    """The buffer filter, off by default: routes that pass a JSON body on without the
    transcoder (which has its own limit) turn it on with `_body_limit`, so an oversized
    body is refused with 413 at the edge. Streams (gRPC, WebSocket) are never buffered."""
    return {
        "name": _BUFFER_FILTER,
        "typed_config": {"@type": _BUFFER, "max_request_bytes": 1024 * 1024},
        "disabled": True,
    }


def _body_limit(max_bytes: int) -> dict[str, Any]:
    """Per-route config enabling the body limit (see `_body_limit_filter`)."""
    return {
        _BUFFER_FILTER: {
            "@type": _FILTER_CONFIG,
            "config": {"@type": _BUFFER_PER_ROUTE, "buffer": {"max_request_bytes": max_bytes}},
        }
    }


def _tls_transport_socket(settings: SuiteSettings) -> dict[str, Any]:
    """The edge listener's TLS (when certificates are configured), offering ALPN h2 and
    http/1.1; plain-text clients are then refused at the handshake."""
    tls = settings.envoy.tls
    if tls.cert_path is None or tls.key_path is None:
        return {}
    return {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TLS,
                "common_tls_context": {
                    "alpn_protocols": list(tls.alpn),
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(tls.cert_path.resolve())},
                            "private_key": {"filename": str(tls.key_path.resolve())},
                        }
                    ],
                },
            },
        }
    }


# -- the OpenAI-compatible HTTP API (router/openai_http.py) ---------------------------

HTTP_API_CLUSTER = "router_http"
_FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
_HTTP_API_ROUTES = (("/v1/chat/completions", "POST"), ("/v1/models", "GET"))


def _http_api_routes(settings: SuiteSettings) -> list[dict[str, Any]]:
    """Plain HTTP routes to the router's HTTP listener, past the transcoder."""
    if not settings.router.http_api.enabled:
        return []
    return [
        {
            # Other methods fall through to the catch-all 404 (JSON, like every local reply).
            "match": {
                "path": path,
                "headers": [{"name": ":method", "string_match": {"exact": method}}],
            },
            # Streams run as long as they produce; stream_idle_timeout cuts silent ones.
            "route": {"cluster": HTTP_API_CLUSTER, "timeout": "0s"},
            "typed_per_filter_config": {
                "envoy.filters.http.grpc_json_transcoder": {
                    "@type": _FILTER_CONFIG,
                    "disabled": True,
                },
                **_body_limit(settings.envoy.max_request_bytes),
            },
        }
        for path, method in _HTTP_API_ROUTES
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
            "match": {
                "path": "/v1/ws",
                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
            },
            "route": {
                "cluster": HTTP_API_CLUSTER,
                "timeout": "0s",
                "upgrade_configs": [{"upgrade_type": "websocket"}],
            },
            "typed_per_filter_config": {
                "envoy.filters.http.grpc_json_transcoder": {
                    "@type": _FILTER_CONFIG,
                    "disabled": True,
                }
            },
        }
    ]


_MAX_DIRECT_RESPONSE = 1024 * 1024


def _openapi_route() -> dict[str, Any]:
    """GET /openapi.json: the HTTP surface's OpenAPI, generated from the contract (the
    local descriptor image: the path Envoy is given may be one only it can see)."""
    from sluice.launcher.openapi import render_openapi_json  # noqa: PLC0415

    return {
        "match": {
            "path": "/openapi.json",
            "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
        },
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
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": {"@type": _FILTER_CONFIG, "disabled": True}
        },
    }


def _http_api_clusters(settings: SuiteSettings) -> list[dict[str, Any]]:
    """HTTP/1.1 cluster of the router's OpenAI-compatible listener."""
    api = settings.router.http_api
    if not api.enabled:
        return []
    return [
        {
            "name": HTTP_API_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": HTTP_API_CLUSTER,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": api.host,
                                            "port_value": api.port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    ]


# Applies the SPEC §2.1 HTTP status the router put in x-sluice-http-status to a
# transcoded (JSON) error; gRPC and gRPC-Web responses keep their 200 + grpc-status.
# Listed before the transcoder, so on the way out it sees the transcoded response.
_ERROR_STATUS_LUA = """
function envoy_on_response(handle)
  local headers = handle:headers()
  local wanted = headers:get("x-sluice-http-status")
  if wanted == nil then
    return
  end
  headers:remove("x-sluice-http-status")
  local content_type = headers:get("content-type") or ""
  if string.find(content_type, "application/json", 1, true) == 1
      and string.match(wanted, "^[1-5][0-9][0-9]$") then
    headers:replace(":status", wanted)
  end
end
"""


def _error_status_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": _ERROR_STATUS_LUA.strip() + "\n"},
        },
    }


# --- Edge rate limits: Envoy's ratelimit filter asks the limiter's RateLimitService. ---

_RATE_LIMIT_FILTER = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
LIMITER_CLUSTER = "limiter"


def _route_name(route: dict[str, Any]) -> str:
    """The `route` descriptor value: the route's gRPC prefix (or HTTP path) without slashes."""
    match = route["match"]
    named = route.get("name") or match.get("prefix") or match.get("path") or "/"
    return str(named).strip("/") or "root"


def _with_rate_limits(route: dict[str, Any]) -> dict[str, Any]:
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


def _rate_limit_filter(settings: SuiteSettings) -> dict[str, Any]:
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
            "timeout": f"{limits.timeout_ms / 1000:g}s",
            "failure_mode_deny": limits.failure_mode_deny,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limited_as_resource_exhausted": True,
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": LIMITER_CLUSTER}},
                "transport_api_version": "V3",
            },
        },
    }


def _limiter_cluster(settings: SuiteSettings) -> dict[str, Any]:
    """HTTP/2 cluster of the limiter (no active health check: the filter's timeout and
    failure mode decide what happens when it is down)."""
    server = settings.limiter.server
    return {
        "name": LIMITER_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _H2_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": LIMITER_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": server.host,
                                        "port_value": server.port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


# -- Browsers: gRPC-Web with CORS, and the web page at / ---------------------------------

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


def _browser_filters() -> list[dict[str, Any]]:
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


def _grpc_web_routes(settings: SuiteSettings) -> list[dict[str, Any]]:
    """gRPC-Web and its CORS preflight for the router's service.

    The route is chosen from the request as it arrives, before the gRPC-Web filter
    rewrites its content-type to application/grpc, so the gRPC routes (which match
    `grpc: {}`, i.e. application/grpc[+...]) never see gRPC-Web: these routes match the
    gRPC-Web content types (and OPTIONS) themselves.
    """
    prefix = f"/{ROUTER_SERVICE}/"
    per_filter = {
        "envoy.filters.http.cors": _cors_policy(settings),
        "envoy.filters.http.grpc_json_transcoder": {"@type": _FILTER_CONFIG, "disabled": True},
    }
    grpc_web = {"name": "content-type", "string_match": {"prefix": "application/grpc-web"}}
    unary_timeout = f"{settings.envoy.unary_timeout_s:g}s"
    return [
        {
            "match": {"path": f"{prefix}Generate", "headers": [grpc_web]},
            "route": {"cluster": "router", "timeout": "0s"},
            "typed_per_filter_config": per_filter,
        },
        {
            "match": {"prefix": prefix, "headers": [grpc_web]},
            "route": {"cluster": "router", "timeout": unary_timeout},
            "typed_per_filter_config": per_filter,
        },
        {
            # Preflights are answered by the CORS filter; nothing reaches the router.
            "match": {
                "prefix": prefix,
                "headers": [{"name": ":method", "string_match": {"exact": "OPTIONS"}}],
            },
            "route": {"cluster": "router", "timeout": "5s"},
            "typed_per_filter_config": per_filter,
        },
    ]


def _web_page_routes(settings: SuiteSettings) -> list[dict[str, Any]]:
    """GET / and /ui/*: the web page, served by the router's HTTP listener."""
    if not settings.router.http_api.enabled:
        return []
    get = [{"name": ":method", "string_match": {"exact": "GET"}}]
    disabled = {
        "envoy.filters.http.grpc_json_transcoder": {"@type": _FILTER_CONFIG, "disabled": True}
    }
    return [
        {
            "match": {**match, "headers": get},
            "route": {"cluster": HTTP_API_CLUSTER, "timeout": "10s"},
            "typed_per_filter_config": disabled,
        }
        for match in ({"path": "/"}, {"prefix": "/ui/"})
    ]


def render_yaml(settings: SuiteSettings, descriptor: Path) -> str:
    """The Envoy bootstrap as YAML text."""
    header = "# Generated by `sluice envoy-config` from the suite's settings. Do not edit.\n"
    return header + yaml.safe_dump(render(settings, descriptor), sort_keys=False, width=120)
