"""Envoy's edge rate limit filter and descriptors follow the suite's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.launcher.envoy import LIMITER_CLUSTER
from tests.unit.launcher.envoy_bootstrap import connection_manager as manager
from tests.unit.launcher.envoy_bootstrap import render_suite as rendered


def test_filter_sits_after_the_transcoder_and_asks_the_limiter(tmp_path: Path) -> None:
    bootstrap = rendered(
        tmp_path,
        "limiter:\n  server: {port: 50999}\n  edge: {domain: d1}\n"
        "envoy:\n  rate_limit: {enabled: true, failure_mode_deny: true, timeout_ms: 250}\n",
    )
    names = [f["name"] for f in manager(bootstrap)["http_filters"]]
    assert names.index("envoy.filters.http.ratelimit") == (
        names.index("envoy.filters.http.grpc_json_transcoder") + 1
    )
    assert names[-1] == "envoy.filters.http.router"
    [config] = [
        f["typed_config"]
        for f in manager(bootstrap)["http_filters"]
        if f["name"] == "envoy.filters.http.ratelimit"
    ]
    assert config["domain"] == "d1"
    assert config["failure_mode_deny"] is True
    assert config["timeout"] == "0.25s"
    assert config["rate_limited_as_resource_exhausted"] is True
    assert config["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"
    assert config["rate_limit_service"]["transport_api_version"] == "V3"
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    endpoint = clusters[LIMITER_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 50999
    assert "http2_protocol_options" in str(clusters[LIMITER_CLUSTER])


def test_every_routed_route_sends_global_key_and_route_descriptors(tmp_path: Path) -> None:
    enabled = "envoy:\n  rate_limit: {enabled: true}\n"
    routes = manager(rendered(tmp_path, enabled))["route_config"]["virtual_hosts"][0]["routes"]
    routed = [r for r in routes if "route" in r]
    assert routed
    for route in routed:
        actions = [rule["actions"] for rule in route["route"]["rate_limits"]]
        # One action per rule: a missing header drops only its own descriptor.
        assert all(len(a) == 1 for a in actions)
        assert {"generic_key": {"descriptor_value": "global"}} in [a[0] for a in actions]
        headers = {
            a[0]["request_headers"]["header_name"] for a in actions if "request_headers" in a[0]
        }
        assert headers == {"x-api-key", "authorization"}
        [route_key] = [
            a[0]["generic_key"] for a in actions if "descriptor_key" in a[0].get("generic_key", {})
        ]
        assert route_key["descriptor_key"] == "route"
        match = route["match"]
        assert route_key["descriptor_value"] == (
            (match.get("prefix") or match["path"]).strip("/") or "root"
        )
    # Direct responses (the 404 catch-all) carry none.
    assert all("rate_limits" not in str(r) for r in routes if "direct_response" in r)


@pytest.mark.parametrize("config", ["{}\n", "envoy:\n  rate_limit: {enabled: false}\n"])
def test_disabled_edge_limits_render_no_filter_cluster_or_descriptors(
    tmp_path: Path, config: str
) -> None:
    bootstrap = rendered(tmp_path, config)  # off unless enabled
    assert "ratelimit" not in str(manager(bootstrap)["http_filters"])
    assert "rate_limits" not in str(manager(bootstrap)["route_config"])
    assert LIMITER_CLUSTER not in [c["name"] for c in bootstrap["static_resources"]["clusters"]]
