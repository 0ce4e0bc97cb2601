"""Converse's pure parts: the bounded history, the Envoy route of its WebSocket bridge."""

from __future__ import annotations

from pathlib import Path

import yaml

from sluice.common.v1 import common_pb2
from sluice.launcher.envoy import HTTP_API_CLUSTER, render
from sluice.launcher.settings import load_suite
from sluice.router.converse import _History
from tests.unit.launcher.envoy_bootstrap import with_certs


def messages(*texts: str) -> tuple[common_pb2.Message, ...]:
    return tuple(common_pb2.Message(role="user", content=text) for text in texts)


def test_history_evicts_the_oldest_turns_beyond_the_count() -> None:
    history = _History(max_turns=2, max_chars=1_000)
    for turn in ("a", "b", "c"):
        history.add(turn, messages(turn))
    assert history.get("a") is None
    assert history.get("b") == messages("b")
    assert history.get("c") == messages("c")
    assert len(history) == 2


def test_history_evicts_the_oldest_turns_beyond_the_characters() -> None:
    history = _History(max_turns=10, max_chars=10)
    history.add("a", messages("xxxx"))
    history.add("b", messages("yyyy"))
    history.add("c", messages("zzzz"))  # 12 chars: "a" goes
    assert [t for t in "abc" if history.get(t) is not None] == ["b", "c"]
    history.add("big", messages("w" * 11))  # larger than the whole budget: not kept
    assert history.get("big") is None
    assert len(history) == 2


def test_no_history_when_switched_off() -> None:
    history = _History(max_turns=0, max_chars=1_000)
    history.add("a", messages("x"))
    assert history.get("a") is None


def routes(tmp_path: Path, yaml_text: str) -> list[dict[str, object]]:
    config = tmp_path / "suite.yaml"
    config.write_text(yaml.safe_dump(with_certs(tmp_path, yaml_text)))
    bootstrap = render(load_suite(config), Path("/x.binpb"))
    [listener] = bootstrap["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    found: list[dict[str, object]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    return found


def test_envoy_upgrades_only_v1_ws_to_a_websocket_on_the_http_listener(tmp_path: Path) -> None:
    found = routes(tmp_path, "router:\n  http_api:\n    port: 18090\n")
    upgrading = [r for r in found if "upgrade_configs" in str(r)]
    assert len(upgrading) == 1
    [ws] = upgrading
    assert ws["match"] == {
        "path": "/v1/ws",
        "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
    }
    route = ws["route"]
    assert isinstance(route, dict)
    assert route["cluster"] == HTTP_API_CLUSTER
    assert route["timeout"] == "0s"
    assert route["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    # The gRPC Converse stream has no route timeout either.
    converse = [r for r in found if "Converse" in str(r.get("match"))]
    assert [r["route"]["timeout"] for r in converse] == ["0s"]  # type: ignore[index]


def test_no_websocket_route_when_the_bridge_is_off(tmp_path: Path) -> None:
    found = routes(tmp_path, "router:\n  converse:\n    websocket_enabled: false\n")
    assert "upgrade_configs" not in str(found)
