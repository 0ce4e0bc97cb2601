"""Envoy's side of the suite's mutual TLS: its upstream hops present Envoy's certificate.

Under `security.mtls` the router, the limiter (its rate limit service) and telemetry (the
OTLP export of Envoy's tracer) accept only callers with a certificate from the suite's
CA, and authorize Envoy by the identity `envoy` (core/grpcx/tls.py). Each such cluster
gets an UpstreamTlsContext: Envoy's certificate, the CA, and the SPIFFE ID the upstream
must present, so Envoy also refuses a process that took over the port. Envoy re-reads
the files when `watched_directory` sees them replaced (rotation without a restart).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluice.core.config import SecuritySettings
from sluice.core.grpcx.certs import spiffe_id
from sluice.core.grpcx.tls import TlsFiles, tls_files

_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
ENVOY_IDENTITY = "envoy"


def envoy_tls_files(security: SecuritySettings) -> TlsFiles:
    """Envoy's certificate, key and CA, from the suite's shared `security` section."""
    return tls_files(security.model_copy(update={"identity": ENVOY_IDENTITY}), ENVOY_IDENTITY)


def upstream_transport_socket(
    files: TlsFiles, server_identity: str, alpn: str = "h2"
) -> dict[str, Any]:
    """The `transport_socket` of a cluster whose hosts must prove `server_identity`
    (`alpn`: h2 for gRPC, http/1.1 for the router's HTTP listener)."""
    certificate: dict[str, Any] = {
        "certificate_chain": {"filename": str(files.cert.resolve())},
        "private_key": {"filename": str(files.key.resolve())},
    }
    validation: dict[str, Any] = {
        "trusted_ca": {"filename": str(files.ca.resolve())},
        "match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": spiffe_id(server_identity)}}
        ],
    }
    if files.cert.parent == files.key.parent:
        certificate["watched_directory"] = {"path": str(files.cert.parent.resolve())}
    if files.ca.parent == files.cert.parent:
        validation["watched_directory"] = {"path": str(files.ca.parent.resolve())}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _UPSTREAM_TLS,
            # The server name the upstream's certificate carries as a DNS SAN too.
            "sni": server_identity,
            "common_tls_context": {
                "alpn_protocols": [alpn],
                "tls_certificates": [certificate],
                "validation_context": validation,
            },
        },
    }


def secure_clusters(
    bootstrap: dict[str, Any],
    files: TlsFiles,
    identities: Mapping[str, str],
    http1: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """`bootstrap` with a TLS transport socket on each cluster named in `identities`
    (cluster name -> the identity its hosts must prove); a name not present is skipped
    (the limiter and telemetry clusters exist only when their features are on); the
    clusters in `http1` speak HTTP/1.1 inside TLS."""
    for cluster in bootstrap.get("static_resources", {}).get("clusters", []):
        identity = identities.get(cluster.get("name", ""))
        if identity is not None:
            alpn = "http/1.1" if cluster["name"] in http1 else "h2"
            cluster["transport_socket"] = upstream_transport_socket(files, identity, alpn)
    return bootstrap
