"""Edge hardening: what one client may send or hold open, body limits, TLS
(docs/edge.md)."""

from __future__ import annotations

from typing import Any

from sluice.launcher.envoy.names import FILTER_CONFIG, seconds
from sluice.launcher.settings import SuiteSettings

_BUFFER_FILTER = "envoy.filters.http.buffer"
_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_BUFFER_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def client_limits(settings: SuiteSettings) -> dict[str, Any]:
    """Connection manager fields bounding what one client may send or hold open."""
    limits = settings.envoy.limits
    return {
        "request_headers_timeout": seconds(limits.request_headers_timeout_s),
        "common_http_protocol_options": {
            "idle_timeout": seconds(limits.idle_timeout_s),
            "max_headers_count": limits.max_headers_count,
        },
        "http2_protocol_options": {"max_concurrent_streams": limits.max_concurrent_streams},
        "max_request_headers_kb": limits.max_request_headers_kb,
    }


def body_limit_filter() -> dict[str, Any]:
    """The buffer filter, off by default: routes that pass a JSON body on without the
    transcoder (which has its own limit) turn it on with `body_limit`, so an oversized
    body is refused with 413 at the edge. Streams (gRPC, WebSocket) are never buffered."""
    return {
        "name": _BUFFER_FILTER,
        "typed_config": {"@type": _BUFFER, "max_request_bytes": 1024 * 1024},
        "disabled": True,
    }


def body_limit(max_bytes: int) -> dict[str, Any]:
    """Per-route config enabling the body limit (see `body_limit_filter`)."""
    return {
        _BUFFER_FILTER: {
            "@type": FILTER_CONFIG,
            "config": {"@type": _BUFFER_PER_ROUTE, "buffer": {"max_request_bytes": max_bytes}},
        }
    }


def tls_transport_socket(settings: SuiteSettings) -> dict[str, Any]:
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
