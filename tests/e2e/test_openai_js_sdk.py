"""The OpenAI-compatible API through Envoy, with the official `openai` JavaScript SDK.

tests/js/openai_sdk.mjs runs the cases with Node.js and prints one JSON line per case;
the assertions are here. Node and the pinned SDK come from `make js-deps` (part of
`make test`); without them these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DEV_KEY, RunningSuite, start_suite
from tests.e2e.test_openai_edge import EDGE_PROVIDER, MESSAGES, RATE_LIMIT_FAULT, sdk

JS_DIR = Path(__file__).resolve().parents[1] / "js"
CASES = (
    "chat",
    "stream",
    "stream_error",
    "models",
    "auth_error",
    "auth_error_stream",
    "bad_request",
    "rate_limit",
)


def js_sdk_node(js_dir: Path = JS_DIR, path: str | None = None) -> str:
    """Node's path, once node and the SDK version package.json pins are installed."""
    node = shutil.which("node", path=path)
    if node is None:
        pytest.fail("node is not installed: run `make js-deps`", pytrace=False)
    pinned = json.loads((js_dir / "package.json").read_text())["dependencies"]["openai"]
    installed = js_dir / "node_modules" / "openai" / "package.json"
    if not installed.is_file():
        pytest.fail(
            f"the openai JS SDK is not installed in {installed.parents[1]}: run `make js-deps`",
            pytrace=False,
        )
    version = json.loads(installed.read_text())["version"]
    if version != pinned:
        pytest.fail(
            f"openai {version} is installed, package.json pins {pinned}: run `make js-deps`",
            pytrace=False,
        )
    return node


def run_js_sdk(node: str, base_url: str, key: str) -> dict[str, dict[str, Any]]:
    """Run every case of openai_sdk.mjs; its JSON lines by case name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SLUICE_"))}
    env["SLUICE_OPENAI_RATE_LIMIT_FAULT"] = RATE_LIMIT_FAULT
    done = subprocess.run(
        [node, str(JS_DIR / "openai_sdk.mjs"), base_url, key],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"node exited {done.returncode}:\n{done.stderr}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {line.pop("case"): line for line in lines}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    with start_suite(tmp_path_factory.mktemp("openai-js"), provider=EDGE_PROVIDER) as running:
        yield running


@pytest.fixture(scope="module")
def node() -> str:
    return js_sdk_node()


@pytest.fixture(scope="module")
def seen(node: str, edge: RunningSuite) -> dict[str, dict[str, Any]]:
    """What the JS SDK observed in each case (one node run for the module)."""
    return run_js_sdk(node, f"{edge.edge}/v1", DEV_KEY)


def observed(seen: dict[str, dict[str, Any]], case: str) -> dict[str, Any]:
    """One case's line; a case the script could not run as planned fails here, alone."""
    assert case in seen, f"openai_sdk.mjs printed no line for {case!r}: {sorted(seen)}"
    assert "unexpected" not in seen[case], f"{case}: {seen[case]['unexpected']}"
    return seen[case]


def test_the_script_runs_exactly_the_cases_asserted_here(seen: dict[str, dict[str, Any]]) -> None:
    assert sorted(seen) == sorted(CASES)


def test_node_and_the_pinned_sdk_are_installed() -> None:
    node = js_sdk_node()
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    # The SDK documents Node 20+; Debian 12's nodejs (what `make js-deps` installs where node
    # is missing) is 18.20, on which every case here passes too. Older has no fetch.
    assert int(version.removeprefix("v").split(".")[0]) >= 18


def test_a_missing_node_or_sdk_fails_and_names_the_make_target(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"node is not installed.*make js-deps"):
        js_sdk_node(JS_DIR, path=str(tmp_path))  # a PATH without node
    (tmp_path / "package.json").write_text((JS_DIR / "package.json").read_text())
    with pytest.raises(pytest.fail.Exception, match=r"not installed in .*make js-deps"):
        js_sdk_node(tmp_path)
    sdk_dir = tmp_path / "node_modules" / "openai"
    sdk_dir.mkdir(parents=True)
    (sdk_dir / "package.json").write_text(json.dumps({"name": "openai", "version": "0.0.1"}))
    with pytest.raises(pytest.fail.Exception, match=r"openai 0\.0\.1 is installed.*make js-deps"):
        js_sdk_node(tmp_path)


def test_plain_chat(edge: RunningSuite, seen: dict[str, dict[str, Any]]) -> None:
    chat = observed(seen, "chat")
    assert chat["object"] == "chat.completion"
    assert chat["role"] == "assistant"
    assert chat["finish_reason"] == "length"
    assert chat["text"]
    assert chat["request_id"]
    usage = chat["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The Python SDK gets the same answer to the same request.
    with sdk(edge) as client:
        reply = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=8)
    assert chat["text"] == reply.choices[0].message.content
    assert chat["model"] == reply.model


def test_streamed_chat_with_usage(seen: dict[str, dict[str, Any]]) -> None:
    stream = observed(seen, "stream")
    assert stream["objects"] == ["chat.completion.chunk"]
    assert stream["ids"] == 1  # every chunk of one completion carries its id
    assert stream["role"] == "assistant"
    assert stream["text"] == observed(seen, "chat")["text"]
    # One token per chunk when idle; under load the router's buffer and the simulated
    # model's ticks may put two in one chunk (docs/architecture.md, the adaptive buffer),
    # so count tokens, not chunks.
    assert 2 <= stream["content_chunks"] <= 8
    assert len(stream["text"].split()) == 8
    assert stream["finish_reason"] == "length"
    assert not stream["last_has_choices"]  # include_usage: a final usage-only chunk
    assert stream["usage"] == observed(seen, "chat")["usage"]


def test_stream_broken_mid_way_raises_after_the_tokens_sent(
    seen: dict[str, dict[str, Any]],
) -> None:
    broken = observed(seen, "stream_error")
    # What arrived before the break (3 tokens, in up to 3 chunks), then the error.
    assert 1 <= broken["content_chunks"] <= 3
    assert len(broken["text"].split()) == 3
    raised = broken["raised"]
    assert raised is not None, f"the stream ended cleanly: {broken}"
    assert raised["sdk_class"] == "APIError"
    assert raised["status"] is None  # the response had started as a 200
    assert raised["type"] == "server_error"
    assert raised["code"] == "service_unavailable"
    assert raised["request_id"]  # the started response's x-request-id


def test_models_list(seen: dict[str, dict[str, Any]]) -> None:
    assert observed(seen, "models") == {"ids": ["default"]}


@pytest.mark.parametrize("case", ["auth_error", "auth_error_stream"])
def test_wrong_key_raises_authentication_error(seen: dict[str, dict[str, Any]], case: str) -> None:
    raised = observed(seen, case)["raised"]
    assert raised is not None, f"no error: {observed(seen, case)}"
    assert raised["sdk_class"] == raised["name"] == "AuthenticationError"
    assert raised["status"] == 401
    assert raised["type"] == "authentication_error"
    assert raised["code"] == "authorization_error"
    assert raised["retry_after"] is None
    assert raised["request_id"]  # error replies carry x-request-id, as OpenAI's do


def test_unknown_model_raises_bad_request_error(seen: dict[str, dict[str, Any]]) -> None:
    raised = observed(seen, "bad_request")["raised"]
    assert raised is not None, f"no error: {seen['bad_request']}"
    assert raised["sdk_class"] == raised["name"] == "BadRequestError"
    assert raised["status"] == 400
    assert raised["type"] == "invalid_request_error"
    assert raised["param"] == "model"
    assert "'nope'" in raised["message"]
    assert raised["request_id"]


def test_rate_limit_raises_rate_limit_error_with_retry_after(
    seen: dict[str, dict[str, Any]],
) -> None:
    raised = observed(seen, "rate_limit")["raised"]
    assert raised is not None, f"no error: {seen['rate_limit']}"
    assert raised["sdk_class"] == raised["name"] == "RateLimitError"
    assert raised["status"] == 429
    assert raised["type"] == "rate_limit_error"
    assert raised["code"] == "rate_limit_exceeded"
    assert raised["retry_after"] == "60"
    assert raised["retry_after_ms"] == "60000"
    assert raised["request_id"]
