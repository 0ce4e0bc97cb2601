"""The edge's own exposure (issue 16 items 6-8): Envoy admin on loopback whatever the
edge binds, `x-sluice-fault` stripped unless fault injection is on, and circuit breakers
on the router's clusters sized from settings; checked on the rendered bootstrap and by
Envoy itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.settings import load_suite
from tests.unit.launcher.envoy_bootstrap import (
    connection_manager,
    render_suite,
    with_certs,
)

BIN = Path(sys.executable).parent
EXPOSED: dict[str, Any] = {
    "envoy": {
        "host": "0.0.0.0",  # nosec B104 - the exposure under test
        "circuit_breakers": {
            "max_connections": 7,
            "max_pending_requests": 8,
            "max_requests": 9,
            "max_retries": 10,
            "max_streams_per_connection": 11,
        },
    }
}


def virtual_host(bootstrap: dict[str, Any]) -> dict[str, Any]:
    [host] = connection_manager(bootstrap)["route_config"]["virtual_hosts"]
    return dict(host)


def test_admin_binds_loopback_whatever_the_edge_binds(tmp_path: Path) -> None:
    bootstrap = render_suite(tmp_path, EXPOSED)
    [listener] = bootstrap["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["address"] == "0.0.0.0"
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_the_fault_header_is_stripped_unless_fault_injection_is_on(tmp_path: Path) -> None:
    assert virtual_host(render_suite(tmp_path))["request_headers_to_remove"] == ["x-sluice-fault"]
    faults = render_suite(tmp_path, {"provider": {"fault_injection": True}})
    assert "request_headers_to_remove" not in virtual_host(faults)


def test_router_clusters_have_circuit_breakers_from_settings(tmp_path: Path) -> None:
    sections = {**EXPOSED, "envoy": {**EXPOSED["envoy"], "rate_limit": {"enabled": True}}}
    clusters = {
        c["name"]: c for c in render_suite(tmp_path, sections)["static_resources"]["clusters"]
    }
    expected = {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": 7,
                "max_pending_requests": 8,
                "max_requests": 9,
                "max_retries": 10,
            }
        ]
    }
    assert clusters["router"]["circuit_breakers"] == expected
    assert clusters["router_http"]["circuit_breakers"] == expected
    assert "circuit_breakers" not in clusters["limiter"]
    h2 = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    options = clusters["router"]["typed_extension_protocol_options"][h2]
    assert options["explicit_http_config"]["http2_protocol_options"]["max_concurrent_streams"] == 11
    # The defaults admit 5,000 concurrent streams and more (Envoy's own: 1,024 and 3).
    default = {c["name"]: c for c in render_suite(tmp_path)["static_resources"]["clusters"]}
    [threshold] = default["router"]["circuit_breakers"]["thresholds"]
    assert threshold == {
        "priority": "DEFAULT",
        "max_connections": 10_000,
        "max_pending_requests": 10_000,
        "max_requests": 10_000,
        "max_retries": 1024,
    }


def test_envoy_accepts_the_hardened_bootstrap(tmp_path: Path) -> None:
    config = tmp_path / "suite.yaml"
    config.write_text(yaml.safe_dump(with_certs(tmp_path, EXPOSED)))
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(yaml.safe_dump(render(load_suite(config), descriptor_path())))
    result = subprocess.run(
        [str(BIN / "envoy"), "--mode", "validate", "-c", str(rendered)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
