"""`sluice probe PART`: ask a part's own gRPC health service whether it is SERVING, over
mutual TLS when the suite runs with it. Kubernetes' native gRPC probes speak plaintext
only, so under mtls the pods probe with this command instead (docs/kubernetes.md,
"Probes"); the part dials itself on loopback with its own certificate."""

from __future__ import annotations

from pathlib import Path

from sluice.core.config import ServerSettings
from sluice.core.grpcx.tls import client_tls, own_identity
from sluice.launcher.parts import grpc_serving
from sluice.launcher.settings import load_suite


def probe(part: str, service: str = "", config: Path | None = None, timeout_s: float = 2.0) -> bool:
    """Whether `part` answers SERVING for `service` ("" = the server as a whole)."""
    settings = getattr(load_suite(config), part)
    server: ServerSettings = settings.server
    identity = own_identity(settings.security, part)
    # The part's certificate names its identity; it is both caller and callee here.
    tls = client_tls(settings.security, part, identity)
    return grpc_serving(f"127.0.0.1:{server.port}", service, timeout_s=timeout_s, tls=tls)
