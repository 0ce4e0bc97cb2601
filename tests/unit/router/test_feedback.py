"""Feedback on answers: the body's validation, the recent-request map (who may score
what, once, for how long), and the handler over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from sluice.core.errors import MissingParameterError, ValidationError
from sluice.core.telemetry.metrics import with_labels
from sluice.router.auth import ApiKeyAuthenticator
from sluice.router.feedback import (
    MAX_BODY_BYTES,
    FeedbackApi,
    FeedbackMetrics,
    parse_feedback,
    verdict,
)
from sluice.router.openai_http import json_http_errors
from sluice.router.recent_requests import RecentRequests
from sluice.router.settings import ApiKeySettings
from tests.support import sha256_hex

ALICE_KEY = "sk-alice-0123"
BOB_KEY = "sk-bob-4567"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the body -------------------------------------------------------------------------


def test_a_valid_body_parses_and_drops_the_comment() -> None:
    parsed = parse_feedback(
        {"request_id": "r-1", "score": 4, "comment": "my email is a@b.c"}, max_comment_chars=100
    )
    assert (parsed.request_id, parsed.score) == ("r-1", 4)
    assert not hasattr(parsed, "comment")
    assert "a@b.c" not in repr(parsed)


@pytest.mark.parametrize(
    ("body", "field", "error"),
    [
        ({"score": 3}, "request_id", MissingParameterError),
        ({"request_id": "r"}, "score", MissingParameterError),
        ({"request_id": 7, "score": 3}, "request_id", ValidationError),
        ({"request_id": "", "score": 3}, "request_id", ValidationError),
        ({"request_id": "x" * 65, "score": 3}, "request_id", ValidationError),
        ({"request_id": "a\nb", "score": 3}, "request_id", ValidationError),
        ({"request_id": "r", "score": 0}, "score", ValidationError),
        ({"request_id": "r", "score": 6}, "score", ValidationError),
        ({"request_id": "r", "score": -1}, "score", ValidationError),
        ({"request_id": "r", "score": 4.5}, "score", ValidationError),
        ({"request_id": "r", "score": 4.0}, "score", ValidationError),
        ({"request_id": "r", "score": "4"}, "score", ValidationError),
        ({"request_id": "r", "score": True}, "score", ValidationError),
        ({"request_id": "r", "score": 10**400}, "score", ValidationError),
        ({"request_id": "r", "score": 3, "comment": 5}, "comment", ValidationError),
        ({"request_id": "r", "score": 3, "comment": "x" * 101}, "comment", ValidationError),
        ({"request_id": "r", "score": 3, "rating": 5}, "rating", ValidationError),
    ],
)
def test_bad_bodies_are_typed_400s_naming_the_field(
    body: dict[str, Any], field: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as raised:
        parse_feedback(body, max_comment_chars=100)
    assert isinstance(raised.value, ValidationError | MissingParameterError)
    assert raised.value.http_status == 400
    assert [v.field for v in raised.value.field_violations] == [field]


def test_verdicts() -> None:
    assert [verdict(s) for s in range(1, 6)] == [
        "negative",
        "negative",
        "neutral",
        "positive",
        "positive",
    ]


# -- the recent requests --------------------------------------------------------------


def test_only_the_key_that_made_a_request_may_score_it_and_only_once() -> None:
    recent = RecentRequests(1000, 60.0, FakeClock())
    recent.remember("r1", "alice")
    assert not recent.take("r1", "bob")
    assert not recent.take("unknown", "alice")
    assert recent.take("r1", "alice")
    assert not recent.take("r1", "alice")  # scored already
    assert len(recent) == 0


def test_a_reused_id_keeps_its_first_key() -> None:
    clock = FakeClock()
    recent = RecentRequests(1000, 60.0, clock)
    recent.remember("r1", "alice")
    clock.now += 25  # a later generation
    recent.remember("r1", "bob")  # bob sends alice's id as his own x-request-id
    recent.remember("r1", "bob")
    assert not recent.take("r1", "bob")
    assert recent.take("r1", "alice")
    assert not recent.take("r1", "bob")  # every copy is gone with alice's score


def test_ids_expire_after_the_window_and_not_before() -> None:
    clock = FakeClock()
    recent = RecentRequests(1000, 60.0, clock)
    recent.remember("old", "alice")
    for _ in range(11):  # traffic keeps rotating generations
        clock.now += 5
        recent.remember(f"filler-{clock.now}", "bob")
    assert clock.now - 1000 == 55
    assert recent.take("old", "alice")  # within the window
    recent.remember("idle", "alice")
    clock.now += 81  # no traffic at all for longer than window + a third
    assert not recent.take("idle", "alice")
    assert len(recent) == 0


def test_capacity_bounds_the_map_and_forgets_the_oldest() -> None:
    recent = RecentRequests(400, 3600.0, FakeClock())
    for i in range(10_000):
        recent.remember(f"r{i}", "alice")
        assert len(recent) <= 400
    assert not recent.take("r0", "alice")
    assert recent.take("r9999", "alice")
    assert len(recent) >= 300  # at most the oldest quarter is dropped at once


# -- the handler ----------------------------------------------------------------------


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[Any, Any], RecentRequests, CollectorRegistry]]:
    authenticator = ApiKeyAuthenticator(
        [
            ApiKeySettings(id="alice", sha256=sha256_hex(ALICE_KEY)),
            ApiKeySettings(id="bob", sha256=sha256_hex(BOB_KEY)),
        ]
    )
    recent = RecentRequests(1000, 60.0, FakeClock())
    registry = CollectorRegistry()
    app = web.Application(middlewares=[json_http_errors])
    FeedbackApi(
        authenticator.authenticate,
        recent,
        FeedbackMetrics(registry, recent),
        max_comment_chars=100,
        max_json_depth=8,
    ).register(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, recent, registry


def _count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_a_score_counts_once_and_only_from_the_requests_key(
    served: tuple[TestClient[Any, Any], RecentRequests, CollectorRegistry],
) -> None:
    client, recent, registry = served
    recent.remember("req-1", "alice")
    assert _count(registry, "sluice_router_feedback_remembered_requests") == 1
    body = {"request_id": "req-1", "score": 2, "comment": "secret@example.com"}

    other = await client.post("/v1/feedback", json=body, headers=_bearer(BOB_KEY))
    assert other.status == 202
    assert await other.json() == {"request_id": "req-1", "counted": False}

    mine = await client.post("/v1/feedback", json=body, headers=_bearer(ALICE_KEY))
    assert mine.status == 202
    assert await mine.json() == {"request_id": "req-1", "counted": True}
    again = await client.post("/v1/feedback", json=body, headers=_bearer(ALICE_KEY))
    assert (await again.json())["counted"] is False

    assert _count(registry, "sluice_router_feedback_total", verdict="negative") == 1
    assert _count(registry, "sluice_router_feedback_total", verdict="unmatched") == 2
    assert _count(registry, "sluice_router_feedback_score_count") == 1
    assert _count(registry, "sluice_router_feedback_score_sum") == 2
    exposition = "".join(
        f"{s.name}{s.labels}{s.value}" for m in registry.collect() for s in m.samples
    )
    assert "secret@example.com" not in exposition
    # A rollout's router exports every series with its pool (core/grpcx/server.py).
    pooled = with_labels(registry, {"pool": "green"})
    assert pooled.get_sample_value("sluice_router_feedback_score_count", {"pool": "green"}) == 1


@pytest.mark.parametrize(
    ("raw", "status", "code", "param"),
    [
        (b'{"request_id": "r", "score": 9}', 400, "validation_error", "score"),
        (b'{"score": 3}', 400, "missing_parameter", "request_id"),
        (b'{"request_id": ["r"], "score": 3}', 400, "validation_error", "request_id"),
        (b"not json", 400, "validation_error", "body"),
        (b"[1, 2]", 400, "validation_error", "body"),
        (b"", 400, "missing_parameter", "body"),
        (b"\xff\xfe", 400, "validation_error", "body"),
        (b"[" * 100 + b"]" * 100, 400, "validation_error", "body"),
        (
            b'{"request_id": "r", "score": 3, "comment": "' + b"x" * MAX_BODY_BYTES + b'"}',
            400,
            "validation_error",
            "body",
        ),
    ],
    ids=[
        "score",
        "missing-id",
        "id-type",
        "not-json",
        "array",
        "empty",
        "not-utf8",
        "deep",
        "huge",
    ],
)
async def test_bad_bodies_get_typed_errors(
    served: tuple[TestClient[Any, Any], RecentRequests, CollectorRegistry],
    raw: bytes,
    status: int,
    code: str,
    param: str,
) -> None:
    client, _, registry = served
    reply = await client.post(
        "/v1/feedback",
        data=raw,
        headers={**_bearer(ALICE_KEY), "content-type": "application/json"},
    )
    assert reply.status == status
    error = (await reply.json())["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert _count(registry, "sluice_router_feedback_total", verdict="rejected") == 1


async def test_a_huge_chunked_body_is_refused_without_a_length(
    served: tuple[TestClient[Any, Any], RecentRequests, CollectorRegistry],
) -> None:
    client, _, _ = served

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b" " * 1024

    reply = await client.post("/v1/feedback", data=chunks(), headers=_bearer(ALICE_KEY))
    assert reply.status == 400
    assert (await reply.json())["error"]["param"] == "body"


async def test_no_key_or_a_wrong_key_is_401(
    served: tuple[TestClient[Any, Any], RecentRequests, CollectorRegistry],
) -> None:
    client, recent, registry = served
    recent.remember("req-1", "alice")
    body = json.dumps({"request_id": "req-1", "score": 5})
    for headers in ({}, _bearer("sk-wrong")):
        reply = await client.post("/v1/feedback", data=body, headers=headers)
        assert reply.status == 401
        assert (await reply.json())["error"]["type"] == "authentication_error"
    assert _count(registry, "sluice_router_feedback_score_count") == 0
    assert recent.take("req-1", "alice")  # still there for its own key
