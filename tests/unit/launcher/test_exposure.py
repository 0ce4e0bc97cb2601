"""`sluice up` refuses an edge beyond loopback with the development key or without TLS
(issue 16 item 7), naming the settings to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sluice.core.grpcx.certs import issue, load_authority, write_identity, write_suite_certs
from sluice.launcher.parts import StartupError
from sluice.launcher.settings import exposure_problems, load_suite
from sluice.launcher.supervisor import Suite
from tests.support import sha256_hex


def suite(
    tmp_path: Path, envoy: dict[str, object], router: dict[str, object] | None = None
) -> Suite:
    config = tmp_path / "suite.yaml"
    config.write_text(yaml.safe_dump({"envoy": envoy, "router": router or {}}))
    return Suite(load_suite(config), run_dir=tmp_path / "run")


def edge_pair(tmp_path: Path) -> dict[str, str]:
    write_suite_certs(tmp_path / "ca", ("edge",))
    write_identity(tmp_path / "ca", "edge", *issue(load_authority(tmp_path / "ca"), "edge"))
    return {
        "cert_path": str(tmp_path / "ca" / "edge.pem"),
        "key_path": str(tmp_path / "ca" / "edge-key.pem"),
    }


def test_an_exposed_edge_with_the_dev_key_and_no_tls_names_both_settings(tmp_path: Path) -> None:
    exposed = suite(tmp_path, {"host": "0.0.0.0"})
    problems = exposure_problems(exposed.settings)
    assert len(problems) == 2
    assert "router.api_keys" in problems[0] and "envoy.tls.cert_path" in problems[1]
    with pytest.raises(StartupError, match=r"router\.api_keys"):
        exposed.start()
    assert exposed.parts == []  # nothing was started


def test_loopback_and_a_properly_configured_exposed_edge_pass(tmp_path: Path) -> None:
    assert exposure_problems(suite(tmp_path, {"host": "127.0.0.1"}).settings) == []
    assert exposure_problems(suite(tmp_path, {"host": "::1"}).settings) == []
    keys: dict[str, object] = {"api_keys": [{"id": "prod", "sha256": sha256_hex("sk-real")}]}
    ready = suite(tmp_path, {"host": "0.0.0.0", "tls": edge_pair(tmp_path)}, keys)
    assert exposure_problems(ready.settings) == []
