"""The whole bootstrap: the edge listener and its connection manager (filters in order,
routes, local replies, tracing), the clusters, the admin listener and the overload
manager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluice.core import headers
from sluice.launcher.envoy.browsers import browser_filters
from sluice.launcher.envoy.clusters import clusters
from sluice.launcher.envoy.errors import error_status_filter, local_reply_config
from sluice.launcher.envoy.grpc_framing import framing_filter
from sluice.launcher.envoy.hardening import body_limit_filter, client_limits, tls_transport_socket
from sluice.launcher.envoy.names import (
    HTTP_API_CLUSTER,
    LIMITER_CLUSTER,
    ROUTER_CLUSTER,
    ROUTER_SERVICE,
    TELEMETRY_CLUSTER,
    TRANSCODER_FILTER,
    seconds,
)
from sluice.launcher.envoy.rate_limits import rate_limit_filter
from sluice.launcher.envoy.routes import routes
from sluice.launcher.envoy.stats import stats_listener
from sluice.launcher.envoy.tracing import flush_runtime, tracing
from sluice.launcher.envoy.upstream_tls import envoy_tls_files, secure_clusters
from sluice.launcher.settings import SuiteSettings

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"  # noqa: E501
_TRANSCODER = (
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
)
_ROUTER_FILTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors."
    "downstream_connections.v3.DownstreamConnectionsConfig"
)
ADMIN_HOST = "127.0.0.1"
"""Where Envoy's admin interface listens, whatever `envoy.host` is."""
# /openapi.json is a direct response bigger than the 4 KiB default.
_MAX_DIRECT_RESPONSE = 1024 * 1024


def _transcoder(settings: SuiteSettings, descriptor: Path) -> dict[str, Any]:
    """gRPC to JSON, server streams as Server-Sent Events (docs/envoy.md, "Transcoding";
    the events themselves: docs/streams.md)."""
    return {
        "name": TRANSCODER_FILTER,
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
            "max_request_body_size": settings.envoy.max_request_bytes,
            "request_validation_options": {
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
            },
        },
    }


def _connection_manager(settings: SuiteSettings, descriptor: Path) -> dict[str, Any]:
    envoy = settings.envoy
    return {
        "@type": _HCM,
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "stream_idle_timeout": seconds(envoy.stream_idle_timeout_s),
        **client_limits(settings),
        "local_reply_config": local_reply_config(),
        "route_config": {
            "name": "edge",
            "max_direct_response_body_size_bytes": _MAX_DIRECT_RESPONSE,
            "virtual_hosts": [
                {
                    "name": "sluice",
                    "domains": ["*"],
                    "routes": routes(settings),
                    # A client must not pick the provider's faults unless the suite runs
                    # with fault injection on (docs/security.md).
                    **(
                        {}
                        if settings.provider.fault_injection
                        else {"request_headers_to_remove": [headers.FAULT]}
                    ),
                }
            ],
        },
        **({"tracing": tracing(settings)} if settings.router.tracing.enabled else {}),
        "http_filters": [
            error_status_filter(),
            *browser_filters(),
            # After grpc_web: it sees gRPC framing for gRPC-Web too. On per route only.
            framing_filter(),
            body_limit_filter(),
            _transcoder(settings, descriptor),
            # After the transcoder: JSON requests are limited by the gRPC route they map to.
            *([rate_limit_filter(settings)] if envoy.rate_limit.enabled else []),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_FILTER}},
        ],
    }


def render(settings: SuiteSettings, descriptor: Path) -> dict[str, Any]:
    """The Envoy bootstrap as a dict."""
    envoy = settings.envoy
    bootstrap: dict[str, Any] = {
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _CONNECTIONS,
                        "max_active_downstream_connections": envoy.max_connections,
                    },
                }
            ]
        },
        # Loopback whatever the edge binds: admin can quit Envoy and rewrite its runtime.
        "admin": {
            "address": {"socket_address": {"address": ADMIN_HOST, "port_value": envoy.admin_port}}
        },
        "layered_runtime": flush_runtime(),
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
                                    "typed_config": _connection_manager(settings, descriptor),
                                }
                            ],
                            **tls_transport_socket(settings),
                        }
                    ],
                }
            ],
            "clusters": clusters(settings),
        },
    }
    if envoy.stats_port:
        listener, admin_cluster = stats_listener(settings, ADMIN_HOST)
        bootstrap["static_resources"]["listeners"].append(listener)
        bootstrap["static_resources"]["clusters"].append(admin_cluster)
    security = settings.router.security
    if not security.mtls:
        return bootstrap
    # Under mtls every upstream demands Envoy's certificate (docs/security.md), the
    # router's HTTP listener (router_http, HTTP/1.1) too.
    return secure_clusters(
        bootstrap,
        envoy_tls_files(security),
        {
            ROUTER_CLUSTER: "router",
            HTTP_API_CLUSTER: "router",
            LIMITER_CLUSTER: "limiter",
            TELEMETRY_CLUSTER: "telemetry",
        },
        http1=frozenset({HTTP_API_CLUSTER}),
    )


def render_yaml(settings: SuiteSettings, descriptor: Path) -> str:
    """The Envoy bootstrap as YAML text."""
    header = "# Generated by `sluice envoy-config` from the suite's settings. Do not edit.\n"
    return header + yaml.safe_dump(render(settings, descriptor), sort_keys=False, width=120)
