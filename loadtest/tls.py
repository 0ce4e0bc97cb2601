"""How the load scripts dial the suite's internal gRPC ports: mutual TLS is the suite's
default (docs/security.md), so a script that calls the router, provider or limiter
directly presents a certificate of the suite's CA, as the operator unless it says
otherwise (the provider answers only the router's identity). The Envoy edge stays
plaintext on loopback and needs none of this."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from sluice.core.grpcx.certs import cert_file, has_suite_certs, key_file, write_suite_certs
from sluice.core.grpcx.tls import OPERATOR, ClientTls, TlsFiles, channel_credentials

DEFAULT_CERTS = Path(".run/certs")
"""Where `make up` (`sluice up`) keeps the certificates it made."""


def add_certs_option(parser: argparse.ArgumentParser) -> None:
    """`--certs DIR`: the suite's certificate directory."""
    parser.add_argument(
        "--certs",
        type=Path,
        help="the suite's certificates (ca.pem, <identity>.pem; what `sluice up` writes to "
        "<run dir>/certs); without it, internal ports are dialled in plaintext",
    )


def find_certs(explicit: Path | None = None, run_dir: Path | None = None) -> Path | None:
    """`explicit`, else `<run_dir>/certs`, else .run/certs: the first holding a CA; None
    when there is none (a suite with `security.mtls: false`)."""
    if explicit is not None:
        if not (explicit / "ca.pem").is_file():
            raise FileNotFoundError(f"{explicit / 'ca.pem'}: not a certificate directory")
        return explicit
    for candidate in (run_dir / "certs" if run_dir else None, DEFAULT_CERTS):
        if candidate is not None and (candidate / "ca.pem").is_file():
            return candidate
    return None


def ensure_certs(directory: Path) -> Path:
    """A CA and every suite identity's certificate in `directory` (made once), for the
    scripts that start services of their own (their `security.certs_dir`)."""
    if not has_suite_certs(directory):
        write_suite_certs(directory)
    return directory


def client_tls(certs: Path, server: str, identity: str = OPERATOR) -> ClientTls:
    """Credentials of `identity` for a channel to the service `server`."""
    files = TlsFiles(certs / "ca.pem", certs / cert_file(identity), certs / key_file(identity))
    return ClientTls(channel_credentials(files), server)


def channel(
    target: str,
    certs: Path | None,
    server: str,
    identity: str = OPERATOR,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An aio channel to `target` (the service `server`), as `identity` under mTLS, or
    plaintext when `certs` is None."""
    if certs is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    tls = client_tls(certs, server, identity)
    return grpc.aio.secure_channel(target, tls.credentials, options=[*options, *tls.options])
