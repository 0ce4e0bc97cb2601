"""Mutual TLS on the router's HTTP listener (the OpenAI-compatible API, WebSocket bridge
and web page), like its gRPC port: under `security.mtls` it serves only TLS, demands a
certificate from the suite's CA, and answers only the identities `security.allow` admits
for `HTTP_API` (Envoy and the operator by default; docs/security.md). A refused identity
gets the API's 403 JSON error; no certificate fails the handshake.

Rotation: each handshake checks the files' stamp (the SNI callback, which Envoy's
upstream TLS triggers by naming the router) and serves a freshly loaded certificate once
they changed, so no restart is needed (as core/grpcx/tls.py does for gRPC).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Middleware

from sluice.core.errors import PermissionDeniedError
from sluice.core.grpcx.certs import TRUST_DOMAIN
from sluice.core.grpcx.tls import ANY, TlsFiles

log = logging.getLogger("sluice.security")

HTTP_API = "http"
"""The key of the HTTP listener in the router's `security.allow`."""
_SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["http/1.1"])
    return context


class ReloadingContext:
    """The listener's SSL context, replaced for new handshakes when the files change."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._stamp = files.stamp()
        self.context = _context(files)
        self.context.sni_callback = self._on_hello
        self._current = self.context

    def _on_hello(self, sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        stamp = self._files.stamp()
        if stamp != self._stamp:
            try:
                fresh = _context(self._files)
            except (OSError, ssl.SSLError):
                # Mid-rotation (a file replaced but not yet its pair): try again next time.
                log.warning("certificate files changed but cannot be loaded yet; keeping the old")
            else:
                fresh.sni_callback = self._on_hello
                self._current, self._stamp = fresh, stamp
                log.info("certificate files changed: the HTTP listener serves the new one")
        if self._current is not self.context:
            sock.context = self._current


def peer_identity(request: web.Request) -> str | None:
    """The caller's identity from its verified certificate (SPIFFE URI SAN, else CN)."""
    certificate = request.transport.get_extra_info("peercert") if request.transport else None
    if not certificate:
        return None
    for kind, value in certificate.get("subjectAltName", ()):
        if kind == "URI" and value.startswith(_SPIFFE_PREFIX):
            return str(value.removeprefix(_SPIFFE_PREFIX))
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def authorizer(
    allowed: Collection[str], refused: Callable[[PermissionDeniedError], web.Response]
) -> Middleware:
    """aiohttp middleware admitting only `allowed` identities (`*`: any the CA vouches for)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        identity = peer_identity(request)
        if ANY in allowed or identity in allowed:
            return await handler(request)
        log.warning("refused %s to %s over HTTP", request.path, identity or "(none)")
        return refused(
            PermissionDeniedError(
                f"identity '{identity}' may not call the router's HTTP API",
                metadata={"identity": (identity or "")[:64]},
            )
        )

    return check
