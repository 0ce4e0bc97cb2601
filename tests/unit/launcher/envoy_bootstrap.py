"""Rendering the Envoy bootstrap for a test's suite settings, and finding its parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluice.core.grpcx.certs import write_suite_certs
from sluice.launcher.envoy import render
from sluice.launcher.settings import load_suite


def with_certs(tmp_path: Path, config: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """The suite YAML (text or dict) as a dict; unless it has a `security` section, with
    the default mtls on and real certificates in `tmp_path/certs` (Envoy's upstream TLS
    names them; `envoy --mode validate` loads them)."""
    data: dict[str, Any] = yaml.safe_load(config) if isinstance(config, str) else config or {}
    data = dict(data or {})
    if "security" not in data:
        write_suite_certs(tmp_path / "certs")
        data["security"] = {"certs_dir": str(tmp_path / "certs")}
    return data


def render_suite(tmp_path: Path, config: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """The bootstrap for a suite YAML given as text or as a dict (None: the defaults)."""
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(with_certs(tmp_path, config)))
    return render(load_suite(path), Path("/x.binpb"))


def connection_manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The edge listener's HTTP connection manager."""
    [listener] = bootstrap["static_resources"]["listeners"]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    """The routes of the edge's one virtual host, in match order."""
    [host] = connection_manager(bootstrap)["route_config"]["virtual_hosts"]
    found: list[dict[str, Any]] = host["routes"]
    return found
