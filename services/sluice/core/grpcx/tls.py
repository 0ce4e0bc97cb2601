"""Mutual TLS for the suite's gRPC hops, and authorization by the caller's identity.

Every service serves only TLS and demands a client certificate from the same CA; a
caller's identity is its certificate's SPIFFE ID (`spiffe://sluice/<identity>`, the
URI SAN, core/grpcx/certs.py) or else its subject CN. `Authorizer` then checks the
identity against the called method's allow list (`security.allow`). What a caller meets:

- no TLS, or TLS without a client certificate, or one from another CA, or an expired
  one: the handshake fails and the call ends UNAVAILABLE on the caller's side before
  any request is read (gRPC has no status for a connection it never opened);
- a valid certificate whose identity is not allowed: PERMISSION_DENIED with the
  AUTHORIZATION_ERROR reason, counted in `sluice_errors` like any error.

The server re-reads its certificate files when they change (checked at each new
connection), so rotated certificates take effect without a restart; channels pick up
new files when they are created.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from sluice.core.audit import AdminRecord, AuditLog
from sluice.core.config import ConfigError, SecuritySettings
from sluice.core.errors import AuthenticationError, PermissionDeniedError
from sluice.core.grpcx.certs import CA_CERT, cert_file, key_file
from sluice.core.grpcx.handlers import StreamBehaviour, UnaryBehaviour, wrap_handler
from sluice.core.grpcx.interceptors import Continuation, abort_with
from sluice.core.grpcx.types import ServicerContext
from sluice.core.telemetry.metrics import RpcMetrics

log = logging.getLogger("sluice.security")

ANY = "*"
"""In an allow list: any identity the CA vouches for."""
OPERATOR = "operator"
"""The identity of people and tools operating the suite (grpcurl, `sluice top`)."""
# Open to every caller whatever the service's own list says: health (Envoy, the
# launcher), and server reflection for operators only (it lists every method).
BASE_ALLOW: dict[str, list[str]] = {
    "grpc.health.v1.Health": [ANY],
    "grpc.reflection.v1alpha.ServerReflection": [OPERATOR],
    "grpc.reflection.v1.ServerReflection": [OPERATOR],
}
_SPIFFE_PREFIX = "spiffe://sluice/"


@dataclass(frozen=True)
class TlsFiles:
    """The CA bundle, certificate chain and key of one identity."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) bytes; OSError naming the file when one is unreadable."""
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()

    def stamp(self) -> tuple[int, ...]:
        """Changes whenever one of the files is replaced or rewritten."""
        stamps: list[int] = []
        for path in (self.ca, self.cert, self.key):
            try:
                info = os.stat(path)
            except OSError:
                stamps += [-1, -1, -1]
            else:
                stamps += [info.st_mtime_ns, info.st_size, info.st_ino]
        return tuple(stamps)


def own_identity(settings: SecuritySettings, service: str) -> str:
    """The identity a service presents: `security.identity`, else its name."""
    return settings.identity or service


def tls_files(settings: SecuritySettings, identity: str) -> TlsFiles:
    """Where `identity`'s files are: explicit paths first, then `certs_dir`."""
    directory = settings.certs_dir

    def pick(explicit: Path | None, name: str) -> Path:
        if explicit is not None:
            return explicit
        if directory is None:
            raise ConfigError(
                "security.mtls is on (the default) but no certificates are configured: set "
                "security.certs_dir (see `sluice certs`) or security.ca_path, cert_path "
                "and key_path; or security.mtls: false for plaintext (docs/security.md)"
            )
        return directory / name

    return TlsFiles(
        ca=pick(settings.ca_path, CA_CERT),
        cert=pick(settings.cert_path, cert_file(identity)),
        key=pick(settings.key_path, key_file(identity)),
    )


# -- server side ---------------------------------------------------------------------


class _Reloader:
    """gRPC's certificate fetcher: new files at the next handshake after they change."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._stamp = files.stamp()

    def configuration(self) -> Any:
        ca, cert, key = self._files.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def __call__(self) -> Any:
        stamp = self._files.stamp()
        if stamp == self._stamp:
            return None  # unchanged: gRPC keeps the current configuration
        try:
            configuration = self.configuration()
        except OSError:
            # Mid-rotation (a file replaced but not yet its pair): try again next time.
            log.warning("certificate files changed but cannot be read yet; keeping the old")
            return None
        self._stamp = stamp
        log.info("certificate files changed: serving the new certificate")
        return configuration


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """TLS that demands a client certificate signed by the CA, reloaded on change."""
    reloader = _Reloader(files)
    return grpc.dynamic_ssl_server_credentials(
        reloader.configuration(), reloader, require_client_authentication=True
    )


def peer_identity(context: ServicerContext) -> str | None:
    """The caller's identity from its verified certificate, or None without one."""
    auth = context.auth_context()
    for key in ("peer_spiffe_id", "peer_uri"):
        for value in auth.get(key, ()):
            text = str(value.decode(errors="replace"))
            if text.startswith(_SPIFFE_PREFIX):
                return text.removeprefix(_SPIFFE_PREFIX)
    for value in auth.get("x509_common_name", ()):
        return str(value.decode(errors="replace"))
    return None


class Authorizer(grpc.aio.ServerInterceptor):
    """Refuses a call unless the caller's certificate names an identity its method allows.

    Installed before the server pipeline (core/grpcx/interceptors.py), so a refused call
    costs one check and no span; the wrapped handler is cached per method like the
    pipeline's, so an allowed call pays one auth-context read.
    """

    def __init__(
        self,
        allow: Mapping[str, Sequence[str]],
        metrics: RpcMetrics | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._allow = {**BASE_ALLOW, **{k: list(v) for k, v in allow.items()}}
        self._metrics = metrics
        self._audit = audit
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def allowed(self, method: str) -> frozenset[str]:
        """The identities `method` (a `/pkg.Service/Method` path) admits."""
        exact = self._allow.get(method)
        if exact is not None:
            return frozenset(exact)
        service = method.lstrip("/").split("/", 1)[0]
        return frozenset(self._allow.get(service, ()))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        allowed = self.allowed(method)
        wrapped = wrap_handler(
            await continuation(handler_call_details),
            unary=lambda behaviour: self._unary(method, allowed, behaviour),
            stream=lambda behaviour: self._stream(method, allowed, behaviour),
        )
        if wrapped is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED; never cached
        self._handlers[method] = wrapped
        return wrapped

    async def _check(self, method: str, allowed: frozenset[str], context: ServicerContext) -> None:
        identity = peer_identity(context)
        if identity is None:
            error: AuthenticationError | PermissionDeniedError = AuthenticationError(
                "a client certificate is required", metadata={"method": method}
            )
        elif ANY in allowed or identity in allowed:
            return
        else:
            error = PermissionDeniedError(
                f"identity '{identity}' may not call {method}",
                metadata={"method": method, "identity": identity[:64]},
            )
        log.warning("refused %s to %s: %s", method, identity or "(none)", error.message)
        if self._metrics is not None:
            self._metrics.count_error(method, error.reason)
        if self._audit is not None:
            self._audit.admin(
                AdminRecord(
                    action="call.refused",
                    actor=identity or "(no certificate)",
                    target=method,
                    outcome=error.code.name,
                )
            )
        await abort_with(context, error)

    def _unary(
        self, method: str, allowed: frozenset[str], behaviour: UnaryBehaviour
    ) -> UnaryBehaviour:
        async def run(request: Any, context: ServicerContext) -> Any:
            await self._check(method, allowed, context)
            return await behaviour(request, context)

        return run

    def _stream(
        self, method: str, allowed: frozenset[str], behaviour: StreamBehaviour
    ) -> StreamBehaviour:
        # A coroutine that drives the inner behaviour (the pipeline's writes its own
        # responses), so streams pay no extra generator layer per message.
        async def run(request: Any, context: ServicerContext) -> None:
            await self._check(method, allowed, context)
            responses: Any = behaviour(request, context)
            if hasattr(responses, "__aiter__"):
                try:
                    async for response in responses:
                        await context.write(response)
                finally:
                    await responses.aclose()
            else:
                await responses

        return run


# -- client side ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTls:
    """What a channel to one service needs: our credentials and the name it must prove."""

    credentials: grpc.ChannelCredentials
    server_identity: str

    @property
    def options(self) -> tuple[tuple[str, str]]:
        """Channel options: check the server's certificate names the expected service
        (its DNS SAN `<identity>`), whatever address was dialled."""
        return (("grpc.ssl_target_name_override", self.server_identity),)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Our certificate for the server to check, and the CA to check the server with."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def client_tls(settings: SecuritySettings, service: str, server_identity: str) -> ClientTls | None:
    """TLS for `service`'s channel to `server_identity`, or None when mtls is off."""
    if not settings.mtls:
        return None
    files = tls_files(settings, own_identity(settings, service))
    return ClientTls(channel_credentials(files), server_identity)
