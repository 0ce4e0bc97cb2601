"""/openapi.json through Envoy, generated from the contract, and a schemathesis run on it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sluice.launcher.envoy import descriptor_path
from sluice.launcher.openapi import render_openapi
from tests.e2e.conftest import DEV_KEY, RunningSuite, start_suite

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def fast_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    # Quick answers, so generated valid requests do not each stream for a second.
    fast = {"time_to_first_token_ms": 1, "tokens_per_second": 5000, "answer_tokens": 8}
    with start_suite(
        tmp_path_factory.mktemp("openapi"), provider={"backends": {"simulated": fast}}
    ) as running:
        yield running


def test_every_annotated_rpc_is_an_operation() -> None:
    document = render_openapi(descriptor_path())
    paths = document["paths"]
    assert set(paths) == {
        "/v1/generate",
        "/v1/complete",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/feedback",
    }
    assert set(paths["/v1/generate"]) == {"post"}
    assert "text/event-stream" in paths["/v1/generate"]["post"]["responses"]["200"]["content"]
    request = document["components"]["schemas"]["sluice.router.v1.GenerateRequest"]
    assert {"model", "messages", "max_tokens", "temperature", "stop"} <= set(request["properties"])
    assert request["properties"]["model"]["description"].startswith("Model alias")
    for path, operations in paths.items():
        for operation in operations.values():
            # Feedback is accepted (202), not answered (router/feedback.py).
            success = "202" if path == "/v1/feedback" else "200"
            assert {success, "400", "401", "429", "503"} <= set(operation["responses"])


def test_openapi_json_is_served_through_envoy(fast_edge: RunningSuite) -> None:
    response = httpx.get(f"{fast_edge.edge}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == render_openapi(descriptor_path())
    # Only GET: anything else is the edge's JSON 404.
    assert httpx.post(f"{fast_edge.edge}/openapi.json", timeout=10).status_code == 404


def test_schemathesis_finds_no_5xx_and_no_undocumented_status(
    fast_edge: RunningSuite, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{fast_edge.edge}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
            "--max-examples",
            "10",
            "--seed",
            "6",
            "--header",
            f"Authorization: Bearer {DEV_KEY}",
            "--request-timeout",
            "10",
            "--max-time",
            "20",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "/v1/chat/completions" in result.stdout
    (tmp_path / "schemathesis.txt").write_text(result.stdout)
    assert "No issues found" in result.stdout or " passed" in result.stdout, result.stdout[-3000:]
