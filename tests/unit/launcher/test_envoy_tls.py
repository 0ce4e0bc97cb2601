"""Envoy's upstream mutual TLS (launcher/envoy/upstream_tls.py), checked by Envoy itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sluice.core.config import SecuritySettings
from sluice.core.grpcx.certs import spiffe_id, write_suite_certs
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.envoy.upstream_tls import envoy_tls_files, secure_clusters
from sluice.launcher.settings import load_suite

BIN = Path(sys.executable).parent
IDENTITIES = {"router": "router", "limiter": "limiter", "telemetry": "telemetry"}


def bootstrap(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    certs = tmp_path / "certs"
    write_suite_certs(certs)
    config = tmp_path / "suite.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "envoy": {"rate_limit": {"enabled": True}},
                "tracing": {"enabled": True},
                "security": {"mtls": False},
            }
        )
    )
    files = envoy_tls_files(SecuritySettings(mtls=True, certs_dir=certs))
    rendered = render(load_suite(config), descriptor_path())
    return secure_clusters(rendered, files, IDENTITIES), certs


def test_each_internal_cluster_presents_envoy_and_demands_its_service(tmp_path: Path) -> None:
    secured, certs = bootstrap(tmp_path)
    clusters = {c["name"]: c for c in secured["static_resources"]["clusters"]}
    assert set(IDENTITIES) <= set(clusters)
    for name, identity in IDENTITIES.items():
        context = clusters[name]["transport_socket"]["typed_config"]
        assert context["sni"] == identity
        common = context["common_tls_context"]
        [certificate] = common["tls_certificates"]
        assert certificate["certificate_chain"]["filename"] == str(certs / "envoy.pem")
        assert certificate["private_key"]["filename"] == str(certs / "envoy-key.pem")
        validation = common["validation_context"]
        assert validation["trusted_ca"]["filename"] == str(certs / "ca.pem")
        assert validation["match_typed_subject_alt_names"] == [
            {"san_type": "URI", "matcher": {"exact": spiffe_id(identity)}}
        ]
    # The plaintext HTTP hop to the router's OpenAI-compatible listener is left alone.
    others = [c for name, c in clusters.items() if name not in IDENTITIES]
    assert all("transport_socket" not in c for c in others)


def test_envoy_accepts_the_secured_bootstrap(tmp_path: Path) -> None:
    secured, _ = bootstrap(tmp_path)
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(secured))
    result = subprocess.run(
        [str(BIN / "envoy"), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_render_secures_the_grpc_clusters_only_under_mtls(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    write_suite_certs(certs)
    config = tmp_path / "suite.yaml"
    sections: dict[str, Any] = {
        "envoy": {"rate_limit": {"enabled": True}},
        "tracing": {"enabled": True},
        "security": {"mtls": False},
    }
    config.write_text(yaml.safe_dump(sections))
    plain = render(load_suite(config), descriptor_path())
    assert all("transport_socket" not in c for c in plain["static_resources"]["clusters"])
    sections["security"] = {"mtls": True, "certs_dir": str(certs)}
    config.write_text(yaml.safe_dump(sections))
    rendered = render(load_suite(config), descriptor_path())
    secured = {
        c["name"]: c["transport_socket"]["typed_config"]["sni"]
        for c in rendered["static_resources"]["clusters"]
        if "transport_socket" in c
    }
    # The router's HTTP listener too: the same identity, HTTP/1.1 inside TLS.
    assert secured == {**IDENTITIES, "router_http": "router"}
    [http] = [c for c in rendered["static_resources"]["clusters"] if c["name"] == "router_http"]
    context = http["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["alpn_protocols"] == ["http/1.1"]


def test_mtls_is_the_default_and_secures_envoy_without_being_asked(tmp_path: Path) -> None:
    assert SecuritySettings().mtls is True
    certs = tmp_path / "certs"
    write_suite_certs(certs)
    config = tmp_path / "suite.yaml"
    config.write_text(yaml.safe_dump({"security": {"certs_dir": str(certs)}}))
    rendered = render(load_suite(config), descriptor_path())
    clusters = {c["name"]: c for c in rendered["static_resources"]["clusters"]}
    assert clusters["router"]["transport_socket"]["typed_config"]["sni"] == "router"
