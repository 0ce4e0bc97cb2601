"""End-to-end over a real HTTP upstream: `sluice up` (Envoy included) with an `openai`
back end pointed at the fake OpenAI server, its key taken from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import start_suite
from tests.e2e.test_suite import AUTH, sse_events

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "E2E_FAKE_OPENAI_KEY"
KEY = "sk-e2e-upstream-7d1c0b9a2e4f"


@pytest.fixture
def fake_openai() -> Iterator[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes",
            "openai",
            "--api-key",
            KEY,
            "--answer-tokens",
            "5",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().split()[1])
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_sse_through_envoy_from_an_openai_upstream(
    tmp_path: Path, fake_openai: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    provider_overrides = {
        "backends": {
            "simulated": {},
            "oa": {
                "kind": "openai",
                "base_url": fake_openai,
                "model": "gpt-4o-mini",
                "api_key_env": KEY_ENV,
            },
        }
    }
    router_overrides = {"models": {"gpt": {"backends": [{"backend": "oa"}]}}}
    with start_suite(tmp_path, provider=provider_overrides, router=router_overrides) as suite:
        body = {
            "model": "gpt",
            "messages": [{"role": "user", "content": "what is the canal depth"}],
            "tools": [{"name": "lookup", "parameters_json": '{"type": "object"}'}],
        }
        with httpx.stream(
            "POST", f"{suite.edge}/v1/generate", json=body, headers=AUTH, timeout=30
        ) as response:
            assert response.status_code == 200
            events = [event for _, event in sse_events(response)]
        calls = [e["tool_call"] for e in events if "tool_call" in e]
        assert calls[0]["name"] == "lookup"
        arguments = "".join(c.get("arguments_delta", "") for c in calls)
        assert json.loads(arguments) == {"query": "what is the canal depth"}
        complete = events[-1]["complete"]
        assert complete["finish_reason"] == "FINISH_REASON_TOOL_CALLS"
        assert complete["usage"]["input_tokens"] == 5
        assert not complete["usage"].get("estimated", False)

        text_body = {"model": "gpt", "messages": [{"role": "user", "content": "hello"}]}
        answer = httpx.post(f"{suite.edge}/v1/complete", json=text_body, headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["text"].split()) == 5
        assert KEY not in suite.logs()
