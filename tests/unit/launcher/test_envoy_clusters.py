"""Envoy's clusters take IP literals as STATIC and names (Kubernetes Services) as
STRICT_DNS: a STATIC cluster refuses a name, so Envoy would not start in a cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sluice.core.grpcx.certs import SUITE_IDENTITIES, write_suite_certs
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.envoy.clusters import cluster, discovery_type
from sluice.launcher.settings import load_suite

BIN = Path(sys.executable).parent
SERVICE = "sluice-router.sluice.svc.cluster.local"


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "STATIC"),
        ("10.0.0.7", "STATIC"),
        ("::1", "STATIC"),
        ("fd00::7", "STATIC"),
        ("localhost", "STRICT_DNS"),
        (SERVICE, "STRICT_DNS"),
        ("127.0.0.1.nip.io", "STRICT_DNS"),
    ],
)
def test_the_address_decides_the_discovery_type(host: str, kind: str) -> None:
    assert discovery_type(host) == kind
    built = cluster("c", host, 50051)
    assert built["type"] == kind
    # Names resolve IPv4 first (a part bound to 127.0.0.1 is not on ::1).
    assert ("dns_lookup_family" in built) is (kind == "STRICT_DNS")


def test_an_explicit_kind_wins() -> None:
    assert cluster("c", "127.0.0.1", 4317, kind="STRICT_DNS")["type"] == "STRICT_DNS"


def _clusters(tmp_path: Path, host: str) -> dict[str, dict[str, object]]:
    certs = tmp_path / "certs"
    write_suite_certs(certs, SUITE_IDENTITIES, days=1)
    path = tmp_path / "suite.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "router": {"server": {"host": host}, "http_api": {"host": host}},
                "limiter": {"server": {"host": host}},
                "envoy": {"rate_limit": {"enabled": True}},
                # mTLS on, as by default: the DNS clusters carry their TLS transport too.
                "security": {"certs_dir": str(certs)},
            }
        )
    )
    bootstrap = render(load_suite(path), descriptor_path())
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(bootstrap))
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


def test_service_names_make_dns_clusters_that_envoy_accepts(tmp_path: Path) -> None:
    clusters = _clusters(tmp_path, SERVICE)
    upstreams = {name: c["type"] for name, c in clusters.items() if name != "telemetry"}
    assert upstreams == {
        "router": "STRICT_DNS",
        "router_http": "STRICT_DNS",
        "limiter": "STRICT_DNS",
    }
    # What used to fail here: "malformed IP address ... set cluster type to 'STRICT_DNS'".
    result = subprocess.run(
        [str(BIN / "envoy"), "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_loopback_addresses_stay_static(tmp_path: Path) -> None:
    clusters = _clusters(tmp_path, "127.0.0.1")
    assert {c["type"] for n, c in clusters.items() if n != "telemetry"} == {"STATIC"}


def test_the_rendered_envoy_pod_gets_a_bootstrap_envoy_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The suite file and environment of deploy/k8s/base's Envoy pod, as `sluice envoy`
    # sees them in the cluster: its upstreams are the Services' names.
    k8s = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "base"
    (config_map,) = yaml.safe_load_all((k8s / "config.yaml").read_text())
    deployment = next(
        d for d in yaml.safe_load_all((k8s / "envoy.yaml").read_text()) if d["kind"] == "Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    suite = tmp_path / "sluice.yaml"
    suite.write_text(config_map["data"]["sluice.yaml"])
    for variable in container["env"]:
        if variable["name"] != "SLUICE_CONFIG":
            monkeypatch.setenv(variable["name"], variable["value"])
    bootstrap = render(load_suite(suite), descriptor_path())
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    assert clusters["router"]["type"] == "STRICT_DNS"
    address = clusters["router"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert address["endpoint"]["address"]["socket_address"]["address"] == SERVICE
    stats = {p["containerPort"] for p in container["ports"] if p["name"] == "stats"}
    listeners = {
        listener["name"]: listener["address"]["socket_address"]["port_value"]
        for listener in bootstrap["static_resources"]["listeners"]
    }
    assert {listeners["stats"]} == stats  # what the probes and the PodMonitor use
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(bootstrap))
    result = subprocess.run(
        [str(BIN / "envoy"), "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
