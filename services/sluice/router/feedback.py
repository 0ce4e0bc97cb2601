"""`POST /v1/feedback`: a client scores an answer it got, as a canary signal.

Body: `{"request_id": "<the answer's x-request-id>", "score": 1..5, "comment": "..."}`.
The score is an integer rating (5 best; a thumbs up/down client sends 5 or 1): all
values positive, so the score histogram's `_sum` only grows, as Prometheus's `rate()`
needs. The optional comment is checked for type and length, then dropped: it may hold
personal data, so it is never stored, logged, traced or counted.

Authenticated like every route (401 without a valid key). A score counts only when the
same key made that request on this router within `router.feedback.window_s`, and only
once (router/recent_requests.py); anything else is accepted (202) with `counted: false`
and no score, the same answer for an unknown id and for another key's, so ids cannot be
probed. Counted scores go to `sluice_router_feedback_score` (a histogram of 1..5) and
`sluice_router_feedback_total{verdict}`; every router series carries the rollout's
`pool` label, and the router that remembers a request is the one that served it, so
scores land in the pool that made the answer (launcher/rollout/gates.py,
`feedback_score`). Feedback calls stay out of `sluice_rpc_requests_total`, which the
canary's error and latency gates read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sluice.core.bounded_json import parse_json_object
from sluice.core.errors import (
    FieldViolation,
    MissingParameterError,
    SluiceError,
    ValidationError,
)
from sluice.core.grpcx.call_context import CallContext, Metadata
from sluice.core.grpcx.request_context import MAX_REQUEST_ID, accept_request_id, request_id_var
from sluice.router.auth import Principal
from sluice.router.openai_http import error_response
from sluice.router.recent_requests import RecentRequests

PATH = "/v1/feedback"
MIN_SCORE, MAX_SCORE = 1, 5
MAX_BODY_BYTES = 16 * 1024
"""Largest feedback body (a request id, a score and a bounded comment fit easily)."""
_FIELDS = frozenset({"request_id", "score", "comment"})


@dataclass(frozen=True, slots=True)
class Feedback:
    """One parsed feedback body (the comment is not kept)."""

    request_id: str
    score: int


def verdict(score: int) -> str:
    """`positive` (4, 5), `neutral` (3) or `negative` (1, 2)."""
    return "positive" if score >= 4 else "neutral" if score == 3 else "negative"


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError(
        f"invalid feedback: {field}: {message}",
        field_violations=[FieldViolation(field, message)],
    )


def _missing(field: str) -> MissingParameterError:
    return MissingParameterError(
        f"invalid feedback: {field} is required",
        field_violations=[FieldViolation(field, "required")],
    )


def parse_feedback(body: dict[str, Any], *, max_comment_chars: int) -> Feedback:
    """A feedback body as `Feedback`; a typed 400 naming the field otherwise."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise _invalid(unknown[0][:64], "unknown field (request_id, score and comment only)")
    request_id = body.get("request_id")
    if request_id is None:
        raise _missing("request_id")
    if not isinstance(request_id, str):
        raise _invalid("request_id", "must be a string")
    if not 0 < len(request_id) <= MAX_REQUEST_ID or not request_id.isprintable():
        raise _invalid("request_id", f"must be 1 to {MAX_REQUEST_ID} printable characters")
    score = body.get("score")
    if score is None:
        raise _missing("score")
    # JSON true is a Python int: refused like 4.0 and "4", so a client's bug shows.
    if isinstance(score, bool) or not isinstance(score, int):
        raise _invalid("score", f"must be an integer from {MIN_SCORE} to {MAX_SCORE}")
    if not MIN_SCORE <= score <= MAX_SCORE:
        raise _invalid("score", f"must be an integer from {MIN_SCORE} to {MAX_SCORE}")
    comment = body.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise _invalid("comment", "must be a string")
        if len(comment) > max_comment_chars:
            raise _invalid("comment", f"at most {max_comment_chars} characters")
    return Feedback(request_id=request_id, score=score)


class FeedbackMetrics:
    """Feedback by verdict, and the counted scores' distribution (sum and count)."""

    def __init__(self, registry: CollectorRegistry, recent: RecentRequests) -> None:
        self.total = Counter(
            "sluice_router_feedback",
            "Feedback received, by verdict: positive (4-5), neutral (3), negative (1-2) "
            "when counted; unmatched when the id is not a recent request of the key on "
            "this router or was scored already; rejected for a bad body or key.",
            ["verdict"],
            registry=registry,
        )
        self.score = Histogram(
            "sluice_router_feedback_score",
            "Counted feedback scores (1 worst .. 5 best).",
            buckets=(1, 2, 3, 4, 5),
            registry=registry,
        )
        remembered = Gauge(
            "sluice_router_feedback_remembered_requests",
            "Request ids this router remembers for scoring.",
            registry=registry,
        )
        remembered.set_function(lambda: float(len(recent)))


class FeedbackApi:
    """The `POST /v1/feedback` handler on the router's HTTP listener."""

    def __init__(
        self,
        authenticate: Callable[[Metadata], Principal],
        recent: RecentRequests,
        metrics: FeedbackMetrics,
        *,
        max_comment_chars: int,
        max_json_depth: int,
    ) -> None:
        self._authenticate = authenticate
        self._recent = recent
        self._metrics = metrics
        self._max_comment_chars = max_comment_chars
        self._max_json_depth = max_json_depth

    def register(self, app: web.Application) -> None:
        """Route `POST /v1/feedback` here."""
        app.router.add_post(PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """Score one earlier answer: 202 with `counted`, or a typed 4xx."""
        call = CallContext.of_http(request.headers, request.remote)
        request_id_var.set(accept_request_id(call.metadata))
        try:
            principal = self._authenticate(call.metadata)
            feedback = parse_feedback(
                await self._body(request), max_comment_chars=self._max_comment_chars
            )
        except SluiceError as error:
            self._metrics.total.labels("rejected").inc()
            return error_response(error)
        counted = self._recent.take(feedback.request_id, principal.key_id)
        if counted:
            self._metrics.total.labels(verdict(feedback.score)).inc()
            self._metrics.score.observe(feedback.score)
        else:
            self._metrics.total.labels("unmatched").inc()
        return web.json_response(
            {"request_id": feedback.request_id, "counted": counted}, status=202
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        """The body as a JSON object, bounded before it is read in full."""
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise _invalid("body", f"at most {MAX_BODY_BYTES} bytes, got {length}")
        raw = b""
        while len(raw) <= MAX_BODY_BYTES:  # a chunked body has no length to check first
            chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _invalid("body", f"at most {MAX_BODY_BYTES} bytes")
        if not raw:
            raise _missing("body")
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise _invalid("body", "not UTF-8") from None
        return parse_json_object(
            text, field="body", max_bytes=MAX_BODY_BYTES, max_depth=self._max_json_depth
        )
