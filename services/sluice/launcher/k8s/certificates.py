"""Mutual TLS in the cluster: every part's certificate directory is its identity's
Secret (keys tls.crt, tls.key, ca.crt, cert-manager's layout) mounted under the file
names the suite reads (services/sluice/core/grpcx/certs.py), and optionally the
cert-manager Certificates that issue those Secrets (docs/security.md for the identities,
docs/kubernetes.md for the install)."""

from __future__ import annotations

from sluice.core.grpcx.certs import CA_CERT, cert_file, key_file, spiffe_id
from sluice.launcher.k8s.meta import Manifest, metadata
from sluice.launcher.k8s.values import PARTS, K8sValues


def secret_name(values: K8sValues, identity: str) -> str:
    """The Secret holding an identity's certificate, key and CA."""
    return f"{values.mtls.secret_prefix}{identity}"


def certs_volume(values: K8sValues, identity: str) -> Manifest:
    """The identity's Secret as the files of a certificate directory. A Secret volume
    (no subPath) is updated in place on renewal; the parts reload changed files at the
    next handshake."""
    return {
        "name": "certs",
        "secret": {
            "secretName": secret_name(values, identity),
            "defaultMode": 0o440,
            "items": [
                {"key": "tls.crt", "path": cert_file(identity)},
                {"key": "tls.key", "path": key_file(identity)},
                {"key": "ca.crt", "path": CA_CERT},
            ],
        },
    }


def certificates(values: K8sValues) -> list[Manifest]:
    """One cert-manager Certificate per identity: the SPIFFE ID the parts authorize by
    and the DNS name clients check (the identity itself), usable as server and client."""
    issuing = values.mtls.cert_manager
    built = []
    for identity in PARTS:
        built.append(
            {
                "apiVersion": "cert-manager.io/v1",
                "kind": "Certificate",
                "metadata": metadata(values, identity, secret_name(values, identity)),
                "spec": {
                    "secretName": secret_name(values, identity),
                    "commonName": identity,
                    "dnsNames": [identity],
                    "uris": [spiffe_id(identity)],
                    "duration": issuing.duration,
                    "renewBefore": issuing.renew_before,
                    "privateKey": {
                        "algorithm": "ECDSA",
                        "size": 256,
                        "encoding": "PKCS8",
                        "rotationPolicy": "Always",
                    },
                    "usages": [
                        "digital signature",
                        "key encipherment",
                        "server auth",
                        "client auth",
                    ],
                    "issuerRef": {
                        "name": issuing.issuer_name,
                        "kind": issuing.issuer_kind,
                        "group": "cert-manager.io",
                    },
                },
            }
        )
    return built
