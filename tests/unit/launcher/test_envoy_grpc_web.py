"""The rendered Envoy config routes gRPC-Web and its CORS preflights before anything
that would capture them, and serves the web page only when the HTTP listener is on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sluice.launcher.envoy import GRPC_WEB_EXPOSE_HEADERS, ROUTER_SERVICE
from sluice.launcher.envoy.grpc_framing import unary_request_methods
from tests.unit.launcher.envoy_bootstrap import connection_manager as manager
from tests.unit.launcher.envoy_bootstrap import render_suite as rendered
from tests.unit.launcher.envoy_bootstrap import routes


def is_grpc_web(route: dict[str, Any]) -> bool:
    return any(
        h["name"] == "content-type" and h["string_match"] == {"prefix": "application/grpc-web"}
        for h in route["match"].get("headers", [])
    )


def test_grpc_web_routes_come_before_the_grpc_routes(tmp_path: Path) -> None:
    table = routes(rendered(tmp_path))
    grpc_web = [i for i, r in enumerate(table) if is_grpc_web(r)]
    preflight = [
        i
        for i, r in enumerate(table)
        if {"name": ":method", "string_match": {"exact": "OPTIONS"}}
        in r["match"].get("headers", [])
    ]
    grpc = [i for i, r in enumerate(table) if "grpc" in r["match"]]
    # One route per method taking one request message (framing checked), then the rest.
    assert len(grpc_web) == len(unary_request_methods()) + 1 and len(preflight) == 1 and grpc
    assert max(grpc_web + preflight) < min(grpc)
    for index in grpc_web + preflight:
        route = table[index]
        assert route["route"]["cluster"] == "router"
        assert (route["match"].get("prefix") or route["match"]["path"]).startswith(
            f"/{ROUTER_SERVICE}/"
        )
        assert route["typed_per_filter_config"]["envoy.filters.http.grpc_json_transcoder"][
            "disabled"
        ]
    # Streams have no route timeout; unary calls keep theirs.
    generate = next(r for r in table if r["match"].get("path") == f"/{ROUTER_SERVICE}/Generate")
    assert is_grpc_web(generate) and generate["route"]["timeout"] == "0s"


def test_cors_policy_exposes_the_grpc_status(tmp_path: Path) -> None:
    bootstrap = rendered(tmp_path, {"envoy": {"cors_allow_origins": ["https://app.example"]}})
    route = next(r for r in routes(bootstrap) if is_grpc_web(r))
    policy = route["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [{"exact": "https://app.example"}]
    exposed = policy["expose_headers"].split(",")
    assert {"grpc-status", "grpc-message"} <= set(exposed) == set(GRPC_WEB_EXPOSE_HEADERS)
    assert policy["forward_not_matching_preflights"] is False


def test_cors_and_grpc_web_filters_run_before_the_transcoder(tmp_path: Path) -> None:
    names = [f["name"] for f in manager(rendered(tmp_path))["http_filters"]]
    cors = names.index("envoy.filters.http.cors")
    grpc_web = names.index("envoy.filters.http.grpc_web")
    assert cors < grpc_web < names.index("envoy.filters.http.grpc_json_transcoder")
    assert names[-1] == "envoy.filters.http.router"


def test_web_page_routes_follow_the_http_listener(tmp_path: Path) -> None:
    def page_routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            r
            for r in routes(bootstrap)
            if r["match"].get("path") == "/" or r["match"].get("prefix") == "/ui/"
        ]

    served = page_routes(rendered(tmp_path))
    assert [r["route"]["cluster"] for r in served] == ["router_http", "router_http"]
    off = rendered(tmp_path, {"router": {"http_api": {"enabled": False}}})
    assert page_routes(off) == []
