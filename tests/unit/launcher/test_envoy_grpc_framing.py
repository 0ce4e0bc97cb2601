"""The framing check (launcher/envoy/grpc_framing.py) runs on the routes of the router's
unary-request methods only: off in the connection manager, on per route, never on
Converse, the JSON/SSE routes or anything else; its refusals are typed errors."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from sluice.launcher.envoy import ROUTER_SERVICE
from sluice.launcher.envoy.grpc_framing import (
    FRAMING_FILTER,
    OVERSIZED_MESSAGE,
    REFUSALS,
    REQUEST_BUFFER_LIMIT,
    lua_source,
    unary_request_methods,
)
from tests.unit.launcher.envoy_bootstrap import connection_manager as manager
from tests.unit.launcher.envoy_bootstrap import render_suite as rendered
from tests.unit.launcher.envoy_bootstrap import routes


def checked(route: dict[str, Any]) -> bool:
    return FRAMING_FILTER in route.get("typed_per_filter_config", {})


def test_the_filter_is_off_by_default_and_runs_after_grpc_web(tmp_path: Path) -> None:
    filters = manager(rendered(tmp_path))["http_filters"]
    names = [f["name"] for f in filters]
    framing = filters[names.index(FRAMING_FILTER)]
    assert framing["disabled"] is True
    assert names.index("envoy.filters.http.grpc_web") < names.index(FRAMING_FILTER)
    assert names.index(FRAMING_FILTER) < names.index("envoy.filters.http.grpc_json_transcoder")


def test_only_unary_request_methods_are_checked(tmp_path: Path) -> None:
    assert {m.name for m in unary_request_methods()} == {"Generate", "Complete", "ListModels"}
    for settings in ({}, {"envoy": {"rate_limit": {"enabled": True}}}):
        table = routes(rendered(tmp_path, settings))
        on = [r for r in table if checked(r)]
        # gRPC-Web and native gRPC, one route each per method, matched on the exact path.
        paths = sorted(r["match"]["path"] for r in on)
        expected = sorted(f"/{ROUTER_SERVICE}/{m.name}" for m in unary_request_methods())
        assert paths == sorted(expected * 2)
        assert sum("grpc" in r["match"] for r in on) == len(expected)
        for route in on:
            assert route["request_body_buffer_limit"] == REQUEST_BUFFER_LIMIT
            assert route["typed_per_filter_config"][FRAMING_FILTER]["name"] == "grpc_framing"
        # Everything else, Converse and the JSON/SSE routes included, never runs it.
        off = [r for r in table if not checked(r)]
        assert any(r["match"].get("prefix") == f"/{ROUTER_SERVICE}/Converse" for r in off)
        assert any(r["match"].get("path") == "/v1/chat/completions" for r in off)
        assert all("request_body_buffer_limit" not in r for r in off)


def test_server_streams_keep_no_route_timeout(tmp_path: Path) -> None:
    for route in routes(rendered(tmp_path, {"envoy": {"unary_timeout_s": 42}})):
        if checked(route):
            generate = route["match"]["path"].endswith("/Generate")
            assert route["route"]["timeout"] == ("0s" if generate else "42s"), route


def _details(source: str, key: str) -> status_pb2.Status:
    row = re.search(rf'^  {key} = {{ "(\d+)", "([^"]*)", "([^"]*)" }},$', source, re.M)
    assert row, key
    status = status_pb2.Status.FromString(base64.b64decode(row.group(3) + "=="))
    assert status.code == int(row.group(1)) and status.message == row.group(2)
    return status


def test_each_refusal_is_a_typed_error() -> None:
    source = lua_source()
    for key, error_type, message in REFUSALS:
        status = _details(source, key)
        assert status.message == message
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info) and info.reason == error_type.reason
    # Bad framing is the client's input; an encoding we lack, an option we do not support.
    codes = {key: _details(source, key).code for key, _, _ in REFUSALS}
    assert codes.pop("encoding") == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert set(codes.values()) == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}


def test_a_grpc_413_is_invalid_argument_before_the_json_one(tmp_path: Path) -> None:
    mappers = manager(rendered(tmp_path))["local_reply_config"]["mappers"]
    grpc_413 = next(i for i, m in enumerate(mappers) if m.get("status_code") == 200)
    mapper = mappers[grpc_413]
    added = {h["header"]["key"]: h["header"]["value"] for h in mapper["headers_to_add"]}
    assert added["grpc-status"] == "3" and added["grpc-message"] == OVERSIZED_MESSAGE
    assert mapper["body_format_override"]["text_format_source"]["inline_string"] == ""
    status_filter, request_filter, transcoded = mapper["filter"]["and_filter"]["filters"]
    assert status_filter["status_code_filter"]["comparison"]["value"]["default_value"] == 413
    assert request_filter["header_filter"]["header"]["string_match"] == {
        "prefix": "application/grpc"
    }
    # A JSON request the transcoder turned into gRPC keeps its JSON 413
    # (tests/e2e/test_edge_hardening.py sends one).
    assert transcoded["header_filter"]["header"] == {
        "name": "x-envoy-original-path",
        "present_match": True,
        "invert_match": True,
    }
    json_413 = next(
        i
        for i, m in enumerate(mappers)
        if m["filter"].get("status_code_filter", {}).get("comparison", {}).get("value", {})
        .get("default_value") == 413
    )  # fmt: skip
    assert grpc_413 < json_413
