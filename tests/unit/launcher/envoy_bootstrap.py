"""Rendering the Envoy bootstrap for a test's suite settings, and finding its parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluice.launcher.envoy import render
from sluice.launcher.settings import load_suite


def render_suite(tmp_path: Path, config: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """The bootstrap for a suite YAML given as text or as a dict (None: the defaults)."""
    path = tmp_path / "suite.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config or {}))
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
