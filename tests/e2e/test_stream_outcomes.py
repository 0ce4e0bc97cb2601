"""What a client sees when a stream cannot finish: never a silent clean end.

- provider crashes mid-stream: SSE ends with one in-band `error` event and no
  `complete`; the OpenAI stream carries `data: {"error": ...}` and the SDK raises.
- Envoy's stream idle timeout mid-stream, or a router crash mid-stream: the transfer
  breaks (an incomplete chunked body over HTTP/1.1), which every HTTP client reports as an
  error rather than a clean end.

A crashed part that is not replicated stops the suite (the supervisor's policy), so each
test starts its own.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import DEV_KEY, RunningSuite, start_suite

AUTH = {"authorization": f"Bearer {DEV_KEY}"}
LONG = {"model": "default", "messages": [{"role": "user", "content": "a long one"}]}


@pytest.fixture
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    with start_suite(
        tmp_path_factory.mktemp("outcomes"),
        provider={
            "fault_injection": True,
            "backends": {
                "simulated": {
                    "time_to_first_token_ms": 20,
                    "tokens_per_second": 20,
                    "answer_tokens": 400,
                }
            },
        },
        envoy={"stream_idle_timeout_s": 1.0, "health_check_interval_ms": 200},
    ) as running:
        yield running


def pid_of(suite: RunningSuite, part: str) -> int:
    return int((suite.log_dir.parent / "run" / f"{part}.pid").read_text())


def data_lines(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: ") :])


def test_provider_crash_mid_stream_ends_sse_with_an_error_event(outcomes: RunningSuite) -> None:
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", f"{outcomes.edge}/v1/generate", json={**LONG, "max_tokens": 400}, headers=AUTH
    ) as response:
        for event in data_lines(response):
            events.append(event)
            if sum("data" in e for e in events) == 2:
                os.kill(pid_of(outcomes, "provider"), signal.SIGKILL)
    assert "complete" not in events[-1]
    assert events[-1]["error"]["reason"] in {"SERVICE_UNAVAILABLE", "NETWORK_FAILURE"}
    assert sum("error" in e for e in events) == 1


def test_provider_crash_mid_stream_raises_in_the_openai_sdk(outcomes: RunningSuite) -> None:
    client = openai.OpenAI(api_key=DEV_KEY, base_url=f"{outcomes.edge}/v1", max_retries=0)
    with client:
        stream = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "another long one"}],
            max_tokens=400,
            stream=True,
        )
        received = 0
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received += 1
                    if received == 2:
                        os.kill(pid_of(outcomes, "provider"), signal.SIGKILL)
    assert received >= 2
    assert caught.value.body["type"] == "server_error"  # type: ignore[index]


def test_envoy_idle_timeout_truncates_the_stream_visibly(outcomes: RunningSuite) -> None:
    """A back end that goes silent is cut by Envoy's stream_idle_timeout: the client sees a
    broken transfer (an error), not a clean end of the response."""
    headers = {**AUTH, "x-sluice-fault": "drop_after_tokens=-1,hang=true"}
    started = time.monotonic()
    with (
        pytest.raises(httpx.HTTPError) as caught,
        httpx.stream(
            "POST", f"{outcomes.edge}/v1/generate", json=LONG, headers=headers, timeout=20
        ) as response,
    ):
        status = response.status_code
        events = list(data_lines(response))
        raise AssertionError(f"clean end after {status}: {events}")
    assert isinstance(caught.value, httpx.RemoteProtocolError | httpx.ReadError), caught.value
    assert 0.9 < time.monotonic() - started < 10


def test_router_crash_mid_stream_truncates_sse_and_openai_streams(outcomes: RunningSuite) -> None:
    router = pid_of(outcomes, "router")
    with (
        pytest.raises(httpx.HTTPError) as caught,
        httpx.stream(
            "POST",
            f"{outcomes.edge}/v1/chat/completions",
            json={**LONG, "max_tokens": 400, "stream": True},
            headers=AUTH,
            timeout=20,
        ) as response,
    ):
        assert response.status_code == 200
        for seen, _ in enumerate(data_lines(response), start=1):
            if seen == 2:
                os.kill(router, signal.SIGKILL)
        raise AssertionError("the stream ended cleanly after the router died")
    assert isinstance(caught.value, httpx.RemoteProtocolError | httpx.ReadError), caught.value
    assert (
        not Path(f"/proc/{router}/status").exists()
        or "zombie" in Path(f"/proc/{router}/status").read_text()
    )
