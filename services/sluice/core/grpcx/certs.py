"""A local certificate authority and one certificate per suite identity (`sluice certs`).

Each certificate names its identity twice: a SPIFFE-style URI SAN
(`spiffe://sluice/<identity>`, what the services authorize by, core/grpcx/tls.py) and the
subject CN. It also carries the DNS names `<identity>` and `localhost` and the loopback
addresses, so a client can check it reached the service it meant to (the channel names the
service it expects) whether it dials a name or 127.0.0.1. Keys are ECDSA P-256: small,
fast handshakes, accepted by grpc and Envoy. Production supplies its own certificates
(security.* paths); these are for a single host and development.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "sluice"
SUITE_IDENTITIES = ("router", "limiter", "provider", "telemetry", "envoy", "operator")
"""The services, Envoy, and the operator (grpcurl, `sluice top`, the launcher's probes)."""
CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"


def spiffe_id(identity: str) -> str:
    """The URI SAN of a suite identity."""
    return f"spiffe://{TRUST_DOMAIN}/{identity}"


def cert_file(identity: str) -> str:
    """File name of an identity's certificate in a certificate directory."""
    return f"{identity}.pem"


def key_file(identity: str) -> str:
    """File name of an identity's private key in a certificate directory."""
    return f"{identity}-key.pem"


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(*, days: int = 3650, name: str = "Sluice local CA") -> Authority:
    """A new self-signed CA allowed to sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue(
    authority: Authority,
    identity: str,
    *,
    days: int = 365,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate for `identity`, usable as both TLS server and client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    start = not_before or now - datetime.timedelta(minutes=5)
    end = not_after or now + datetime.timedelta(days=days)
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(identity)),
        x509.DNSName(identity),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return cert, key


def cert_pem(cert: x509.Certificate) -> bytes:
    """A certificate in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An unencrypted PKCS#8 private key in PEM (the file itself is owner-only)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode, never briefly readable by others.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.chmod(path, mode)


def write_identity(
    directory: Path, identity: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Write `<identity>.pem` (0644) and `<identity>-key.pem` (0600) into `directory`."""
    _write(directory / cert_file(identity), cert_pem(cert), 0o644)
    _write(directory / key_file(identity), key_pem(key), 0o600)


def load_authority(directory: Path) -> Authority:
    """The CA that `write_suite_certs` left in `directory`."""
    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / CA_KEY} is not an EC key")
    return Authority(cert, key)


def write_suite_certs(
    directory: Path,
    identities: tuple[str, ...] = SUITE_IDENTITIES,
    *,
    days: int = 365,
    ca_days: int = 3650,
) -> list[Path]:
    """Create (or reuse) the CA in `directory` and issue a certificate per identity.

    An existing CA is kept, so re-running renews the leaves without re-distributing
    trust; the files written are returned.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if (directory / CA_CERT).is_file() and (directory / CA_KEY).is_file():
        authority = load_authority(directory)
        written = []
    else:
        authority = create_ca(days=ca_days)
        _write(directory / CA_CERT, cert_pem(authority.cert), 0o644)
        _write(directory / CA_KEY, key_pem(authority.key), 0o600)
        written = [directory / CA_CERT, directory / CA_KEY]
    for identity in identities:
        cert, key = issue(authority, identity, days=days)
        write_identity(directory, identity, cert, key)
        written += [directory / cert_file(identity), directory / key_file(identity)]
    return written


def has_suite_certs(directory: Path, identities: tuple[str, ...] = SUITE_IDENTITIES) -> bool:
    """Whether `directory` holds the CA certificate and every identity's pair."""
    files = [CA_CERT] + [f(i) for i in identities for f in (cert_file, key_file)]
    return all((directory / name).is_file() for name in files)
