"""`sluice certs`: a local CA and one certificate per identity (core/grpcx/certs.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from sluice.core.audit import read_records
from sluice.core.grpcx.certs import SUITE_IDENTITIES, spiffe_id
from sluice.launcher.cli import main
from sluice.launcher.parts import Part
from sluice.launcher.settings import load_suite
from sluice.launcher.supervisor import Suite


def san(path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        names.get_values_for_type(x509.UniformResourceIdentifier),
        names.get_values_for_type(x509.DNSName),
    )


def test_certs_writes_a_ca_and_every_identity_with_private_keys(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    assert main(["certs", "--dir", str(directory)]) == 0
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for identity in SUITE_IDENTITIES:
        uris, dns = san(directory / f"{identity}.pem")
        assert uris == [spiffe_id(identity)]
        assert identity in dns and "localhost" in dns
        cert = x509.load_pem_x509_certificate((directory / f"{identity}.pem").read_bytes())
        assert cert.issuer == ca.subject
        mode = stat.S_IMODE((directory / f"{identity}-key.pem").stat().st_mode)
        assert mode == 0o600, oct(mode)
    assert stat.S_IMODE((directory / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_running_again_renews_the_leaves_under_the_same_ca(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    assert main(["certs", "--dir", str(directory)]) == 0
    ca_before = (directory / "ca.pem").read_bytes()
    router_before = (directory / "router.pem").read_bytes()
    assert main(["certs", "--dir", str(directory), "--identity", "router", "--days", "30"]) == 0
    assert (directory / "ca.pem").read_bytes() == ca_before
    assert (directory / "router.pem").read_bytes() != router_before
    renewed = x509.load_pem_x509_certificate((directory / "router.pem").read_bytes())
    days = (renewed.not_valid_after_utc - renewed.not_valid_before_utc).days
    assert days == 30


def test_an_unwritable_directory_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["certs", "--dir", str(blocker / "certs")]) == 1


def test_sluice_up_with_mtls_gives_envoy_the_generated_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "suite.yaml"
    audit = tmp_path / "audit"
    config.write_text(f"security:\n  mtls: true\naudit:\n  enabled: true\n  directory: {audit}\n")
    suite = Suite(load_suite(config), run_dir=tmp_path / "run", start_envoy=True)

    class SpawnedError(Exception):
        pass

    def spawn(part: Part) -> None:
        raise SpawnedError(part.name)

    # Everything up to the first process: certificates made, Envoy's config rendered.
    monkeypatch.setattr(suite, "_start_services", lambda: None)
    monkeypatch.setattr(suite, "_spawn", spawn)
    with pytest.raises(SpawnedError, match="envoy"):
        suite.start()
    certs = (tmp_path / "run" / "certs").resolve()
    assert (certs / "ca.pem").is_file()
    rendered = yaml.safe_load((tmp_path / "run" / "envoy.yaml").read_text())
    clusters = {c["name"]: c for c in rendered["static_resources"]["clusters"]}
    context = clusters["router"]["transport_socket"]["typed_config"]["common_tls_context"]
    [certificate] = context["tls_certificates"]
    assert certificate["certificate_chain"]["filename"] == str(certs / "envoy.pem")
    assert context["validation_context"]["trusted_ca"]["filename"] == str(certs / "ca.pem")
    [record] = read_records(audit / "launcher.jsonl")
    assert (record["action"], record["actor"]) == ("certificates.issued", "sluice up")
