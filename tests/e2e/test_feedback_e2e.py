"""`POST /v1/feedback` through the real Envoy and router (`sluice up`): a score of an
answer the key got is counted once, in the router's metrics as the canary gate reads
them; another key cannot score it; no key is 401; bad bodies are typed 400s (413 from
the edge past its body limit), and hostile bodies and headers (the strategies of
tests/e2e/test_fuzz_edge.py) never a 5xx."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.launcher.rollout.gates import parse_figures
from tests.e2e.conftest import DEV_KEY, RunningSuite, start_suite
from tests.e2e.test_fuzz_edge import (
    AUTHED,
    FUZZ,
    HEADERS,
    JSON_TYPE,
    JSON_VALUES,
    assert_typed,
    body_strategy,
    send,
)

pytestmark = pytest.mark.e2e

OTHER_KEY = "sk-feedback-other"
FAST = {"time_to_first_token_ms": 5, "tokens_per_second": 500, "answer_tokens": 6}
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    with start_suite(
        tmp_path_factory.mktemp("feedback"),
        router={
            "api_keys": [
                {"id": "dev", "sha256": _sha(DEV_KEY)},
                {"id": "other", "sha256": _sha(OTHER_KEY)},
            ]
        },
        provider={"backends": {"simulated": FAST}},
    ) as running:
        yield running


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _feedback(edge: RunningSuite, body: Any, key: str | None = DEV_KEY) -> httpx.Response:
    headers = {"content-type": "application/json", **(_auth(key) if key else {})}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{edge.edge}/v1/feedback", content=content, headers=headers, timeout=10)


def _metric(edge: RunningSuite, name: str, **labels: str) -> float:
    text = httpx.get(edge.metrics_url("router"), timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0


def _chat_request_id(edge: RunningSuite, key: str = DEV_KEY) -> str:
    answer = httpx.post(
        f"{edge.edge}/v1/chat/completions", json=CHAT, headers=_auth(key), timeout=20
    )
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-request-id"]
    assert answer.json()["id"] == f"chatcmpl-{request_id}"
    return request_id


def _sse_request_id(edge: RunningSuite) -> str:
    """The request id of a streamed /v1/generate (transcoded gRPC), from its metadata event."""
    with httpx.stream(
        "POST", f"{edge.edge}/v1/generate", json=CHAT, headers=_auth(DEV_KEY), timeout=20
    ) as answer:
        assert answer.status_code == 200
        events = [json.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: ")]
    assert "complete" in events[-1]
    request_id = events[0]["metadata"]["request_id"]
    assert isinstance(request_id, str) and request_id
    return request_id


def test_a_score_counts_once_from_the_key_that_got_the_answer(edge: RunningSuite) -> None:
    before = parse_figures(httpx.get(edge.metrics_url("router"), timeout=5).text)
    request_id = _chat_request_id(edge)

    stolen = _feedback(edge, {"request_id": request_id, "score": 1}, key=OTHER_KEY)
    assert stolen.status_code == 202
    assert stolen.json() == {"request_id": request_id, "counted": False}

    mine = _feedback(edge, {"request_id": request_id, "score": 2, "comment": "me@example.com"})
    assert mine.status_code == 202, mine.text
    assert mine.json() == {"request_id": request_id, "counted": True}
    again = _feedback(edge, {"request_id": request_id, "score": 5})
    assert again.json()["counted"] is False

    streamed = _sse_request_id(edge)
    assert _feedback(edge, {"request_id": streamed, "score": 5}).json()["counted"] is True

    # What the canary gate scrapes (launcher/rollout/gates.py), from the real /metrics.
    after = parse_figures(httpx.get(edge.metrics_url("router"), timeout=5).text)
    assert after.feedback_count - before.feedback_count == 2
    assert after.feedback_sum - before.feedback_sum == 7
    assert _metric(edge, "sluice_router_feedback_total", verdict="negative") == 1
    assert _metric(edge, "sluice_router_feedback_total", verdict="positive") == 1
    assert _metric(edge, "sluice_router_feedback_total", verdict="unmatched") >= 2
    # The comment went nowhere: not in the metrics, not in any log.
    assert "me@example.com" not in httpx.get(edge.metrics_url("router"), timeout=5).text
    assert "me@example.com" not in edge.logs()


def test_the_other_key_may_score_its_own_answers(edge: RunningSuite) -> None:
    request_id = _chat_request_id(edge, OTHER_KEY)
    assert _feedback(edge, {"request_id": request_id, "score": 3}, key=DEV_KEY).json() == {
        "request_id": request_id,
        "counted": False,
    }
    scored = _feedback(edge, {"request_id": request_id, "score": 3}, key=OTHER_KEY)
    assert scored.json() == {"request_id": request_id, "counted": True}


def test_no_key_or_an_unknown_key_is_401(edge: RunningSuite) -> None:
    request_id = _chat_request_id(edge)
    for key in (None, "sk-not-a-key"):
        refused = _feedback(edge, {"request_id": request_id, "score": 4}, key=key)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
    # Refused attempts did not use the request up.
    assert _feedback(edge, {"request_id": request_id, "score": 4}).json()["counted"] is True


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"request_id": "r", "score": 0}, 400, "validation_error", "score"),
        ({"request_id": "r", "score": 2.5}, 400, "validation_error", "score"),
        ({"request_id": "r", "score": "5"}, 400, "validation_error", "score"),
        ({"score": 5}, 400, "missing_parameter", "request_id"),
        ({"request_id": 12, "score": 5}, 400, "validation_error", "request_id"),
        ({"request_id": "r", "score": 5, "comment": ["x"]}, 400, "validation_error", "comment"),
        (b"{not json", 400, "validation_error", "body"),
        (b'"just a string"', 400, "validation_error", "body"),
        (b"", 400, "missing_parameter", "body"),
        (b'{"request_id": "r", "score": 5, "comment": "' + b"x" * 20_000 + b'"}', 400,
         "validation_error", "body"),
    ],
    ids=["zero", "fraction", "string", "no-id", "id-number", "comment-array", "not-json",
         "not-object", "empty", "over-16k"],
)  # fmt: skip
def test_bad_bodies_are_typed_errors(
    edge: RunningSuite, body: Any, status: int, code: str, param: str
) -> None:
    reply = _feedback(edge, body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


def test_the_edge_limits_the_body_and_the_method(edge: RunningSuite) -> None:
    huge = _feedback(edge, b'{"comment": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    assert huge.status_code == 413
    assert huge.json()["details"][0]["reason"] == "INVALID_INPUT"
    wrong_method = httpx.get(f"{edge.edge}/v1/feedback", headers=_auth(DEV_KEY), timeout=10)
    assert wrong_method.status_code == 404


FEEDBACK = st.fixed_dictionaries(
    {},
    optional={
        "request_id": st.one_of(st.text(max_size=80), JSON_VALUES),
        "score": st.one_of(st.integers(-2, 7), st.just(10**400), st.floats(), JSON_VALUES),
        "comment": st.one_of(st.text(max_size=3000), JSON_VALUES),
        "rating": JSON_VALUES,
    },
)


@pytest.fixture(scope="module")
def client(edge: RunningSuite) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.edge, timeout=30) as opened:
        yield opened


@FUZZ
@given(body=body_strategy(FEEDBACK), headers=HEADERS, authed=st.booleans())
def test_hostile_feedback_is_answered_never_a_5xx(
    client: httpx.Client, body: bytes, headers: list[tuple[str, bytes]], authed: bool
) -> None:
    answer = send(client, "POST", "/v1/feedback", headers, body, AUTHED if authed else JSON_TYPE)
    assert_typed(answer, "POST /v1/feedback")
    assert answer.status_code in (202, 400, 401, 413, 429, 431), answer.text[:300]
