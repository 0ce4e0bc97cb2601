"""Hostile input through the real Envoy to every route (issue 16, abuse-proof edge).

Hypothesis draws bodies (deep nesting, huge numbers, wrong types, invalid UTF-8, huge
strings) and headers (non-UTF-8 bytes, huge, repeated, hostile `traceparent` /
`tracestate`, `x-sluice-*`) for each route of the edge. Every answer must be a normal one
or a typed 4xx JSON error (docs/errors.md): never a 5xx, never traceback text, never a
gRPC-Web INTERNAL/UNKNOWN. Afterwards telemetry's /metrics and GetStats answer and the
router's breakers are all closed.

Bounded for `make test`: a fixed number of examples per route, derandomized (the same
inputs every run, so a failure reproduces), no example database.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.e2e.conftest import DEV_KEY, RunningSuite

pytestmark = [
    pytest.mark.e2e,
    # Hostile inputs are large by design; the failure message shows their first bytes.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

EXAMPLES = 60
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: each example is a few requests through the suite, and the failing
    # input is printed as drawn.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- headers --------------------------------------------------------------------------

# What HTTP/1.1 lets a header value carry: visible ASCII and obs-text (0x80-0xff, not
# UTF-8 in general), spaces and tabs inside.
_VALUE_BYTES = st.binary(min_size=1, max_size=64).map(
    lambda raw: bytes(b if (0x21 <= b <= 0x7E or b >= 0x80) else 0x41 for b in raw)
)
_HEX32 = st.text("0123456789abcdef", min_size=32, max_size=32)
_HEX16 = st.text("0123456789abcdef", min_size=16, max_size=16)
_TRACEPARENT = st.one_of(
    st.builds(
        lambda t, s, f: f"00-{t}-{s}-{f}".encode(),
        _HEX32,
        _HEX16,
        st.sampled_from(["01", "00", "ff"]),
    ),
    st.sampled_from(
        [
            b"00-00000000000000000000000000000000-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-XYZ-00f067aa0ba902b7-01",
            b"-" * 300,
        ]
    ),
    _VALUE_BYTES,
)
_TRACESTATE = st.one_of(
    st.sampled_from(
        [
            b"sluice=r:1e-300",
            b"sluice=r:0",
            b"sluice=r:-1",
            b"sluice=r:nan",
            b"sluice=r:inf",
            b"sluice=r:" + b"9" * 400,
            b"sluice=,=,,,",
            b",".join(b"k%d=v" % i for i in range(64)),
        ]
    ),
    st.builds(lambda v: b"sluice=r:" + v, _VALUE_BYTES),
    _VALUE_BYTES,
)
_HEADER_NAMES = st.sampled_from(
    [
        "x-api-key",
        "authorization",
        "x-request-id",
        "x-sluice-fault",
        "x-sluice-priority",
        "x-sluice-tenant",
        "x-sluice-http-status",
        "grpc-timeout",
        "content-type",
        "accept",
        "origin",
    ]
)
_HEADER = st.one_of(
    st.tuples(_HEADER_NAMES, _VALUE_BYTES),
    st.tuples(st.just("traceparent"), _TRACEPARENT),
    st.tuples(st.just("tracestate"), _TRACESTATE),
    st.tuples(st.just("x-sluice-fault"), st.sampled_from([b"error", b"delay=99999", b"\xff\xfe"])),
    # Huge: past the edge's header limit (60 KiB) now and then.
    st.tuples(_HEADER_NAMES, st.integers(1, 70).map(lambda kib: b"A" * (kib * 1024))),
)
HEADERS = st.lists(_HEADER, max_size=6)  # the same name may come more than once

# -- bodies ---------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "tool", "x"]), "content": JSON_VALUES}
    ),
    JSON_VALUES,
)
CHAT = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("default"), JSON_VALUES),
        "messages": st.one_of(st.lists(_MESSAGE, max_size=3), JSON_VALUES),
        "max_tokens": st.one_of(st.integers(-5, 4), JSON_VALUES, st.just(10**400)),
        "temperature": st.one_of(st.floats(-1e308, 1e308), st.just(10**400), JSON_VALUES),
        "stream": st.one_of(st.booleans(), JSON_VALUES),
        "stop": JSON_VALUES,
        "tools": JSON_VALUES,
        "user": JSON_VALUES,
        "n": JSON_VALUES,
    },
)
GENERATE = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("default"), JSON_VALUES),
        "messages": st.one_of(st.lists(_MESSAGE, max_size=3), JSON_VALUES),
        "maxTokens": st.one_of(st.integers(-5, 4), JSON_VALUES),
        "max_tokens": st.one_of(st.integers(-5, 4), JSON_VALUES),
        "temperature": JSON_VALUES,
        "user": JSON_VALUES,
        "tools": JSON_VALUES,
    },
)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


HOSTILE_RAW = st.one_of(
    st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 100_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(1, 100_000).map(lambda n: b'{"model":"default","temperature":' + b"9" * n + b"}"),
    st.integers(1, 100_000).map(
        lambda n: b'{"messages":[{"role":"user","content":"' + b"\xff\xfe" * n + b'"}]}'
    ),
    st.integers(1, 3 * 1024 * 1024).map(lambda n: b'{"model":"' + b"m" * n + b'"}'),
    st.sampled_from(
        [b"", b"null", b"NaN", b'{"a":NaN}', b"[1,2", b"\x00\x01", b'"\\ud800"', b"{}" * 10]
    ),
    st.binary(max_size=256),
)


def body_strategy(shape: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    return st.one_of(shape.map(_encode), JSON_VALUES.map(_encode), HOSTILE_RAW)


# -- what every answer must be --------------------------------------------------------

_TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|File \"/")


def assert_typed(answer: httpx.Response, what: str) -> None:
    """A normal answer or a typed 4xx JSON error; never 5xx, never a traceback."""
    body = answer.content
    context = f"{what}: {answer.status_code} {body[:300]!r}"
    assert answer.status_code < 500, context
    assert not _TRACEBACK.search(body), context
    if answer.status_code >= 400:
        assert answer.headers.get("content-type", "").startswith("application/json"), context
        error = json.loads(body)
        assert isinstance(error, dict), context
        if "error" in error:  # OpenAI's shape (/v1/chat/completions, /v1/models, /v1/ws)
            assert isinstance(error["error"], dict) and error["error"].get("message"), context
        else:  # google.rpc.Status as JSON (transcoded routes, Envoy's own replies)
            assert isinstance(error.get("code"), int) and error.get("message"), context


def grpc_web_statuses(answer: httpx.Response) -> list[str]:
    """Every grpc-status the answer carries: headers (trailers-only) and trailer frames."""
    found = [answer.headers["grpc-status"]] if "grpc-status" in answer.headers else []
    body, offset = answer.content, 0
    while offset + 5 <= len(body):
        flags, length = body[offset], struct.unpack(">I", body[offset + 1 : offset + 5])[0]
        frame = body[offset + 5 : offset + 5 + length]
        if flags & 0x80:
            found += re.findall(r"grpc-status:\s*(\d+)", frame.decode("latin-1"))
        offset += 5 + length
    return found


@pytest.fixture(scope="module")
def client(suite: RunningSuite) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=suite.edge, timeout=30) as opened:
        yield opened


def send(
    client: httpx.Client,
    method: str,
    path: str,
    headers: list[tuple[str, bytes]],
    body: bytes | None = None,
    base: dict[str, str] | None = None,
) -> httpx.Response:
    return client.request(method, path, headers=as_bytes(base or {}, headers), content=body)


def as_bytes(base: dict[str, str], headers: list[tuple[str, bytes]]) -> list[tuple[bytes, bytes]]:
    """The test's own headers, then the drawn ones (non-UTF-8 values stay bytes)."""
    own = [(k.encode(), v.encode()) for k, v in base.items()]
    return own + [(k.encode(), v) for k, v in headers]


JSON_TYPE = {"content-type": "application/json"}
AUTHED = {**JSON_TYPE, "authorization": f"Bearer {DEV_KEY}"}


@FUZZ
@given(body=body_strategy(CHAT), headers=HEADERS, authed=st.booleans())
def test_chat_completions(
    client: httpx.Client, body: bytes, headers: list[tuple[str, bytes]], authed: bool
) -> None:
    answer = send(
        client, "POST", "/v1/chat/completions", headers, body, AUTHED if authed else JSON_TYPE
    )
    assert_typed(answer, "POST /v1/chat/completions")


@FUZZ
@given(
    body=body_strategy(GENERATE),
    headers=HEADERS,
    path=st.sampled_from(["/v1/generate", "/v1/complete"]),
)
def test_transcoded_generate_and_complete(
    client: httpx.Client, body: bytes, headers: list[tuple[str, bytes]], path: str
) -> None:
    answer = send(client, "POST", path, headers, body, AUTHED)
    assert_typed(answer, f"POST {path}")


@FUZZ
@given(
    headers=HEADERS,
    path=st.sampled_from(
        [
            "/v1/models",
            "/openapi.json",
            "/",
            "/ui/app.js",
            "/ui/%ff",
            "/ui/../../etc/passwd",
            "/nowhere",
        ]
    ),
)
def test_get_routes(client: httpx.Client, headers: list[tuple[str, bytes]], path: str) -> None:
    answer = send(client, "GET", path, headers, None, {"authorization": f"Bearer {DEV_KEY}"})
    assert_typed(answer, f"GET {path}")


# A message with any flags byte (0x80 is a trailer frame, 1 compression without a
# grpc-encoding, others unknown), whole or cut short, alone or with another, or no body
# at all: Envoy refuses bad framing of the unary-request methods (grpc_framing.py).
_GRPC_WEB_FRAME = st.builds(
    lambda flags, payload: bytes([flags]) + struct.pack(">I", len(payload)) + payload,
    st.one_of(st.just(0), st.sampled_from([1, 2, 0x80, 0x81, 0xFF])),
    st.binary(max_size=256),
)
GRPC_WEB_FRAMES = st.one_of(
    _GRPC_WEB_FRAME,
    st.builds(lambda frame, cut: frame[:cut], _GRPC_WEB_FRAME, st.integers(0, 8)),
    st.builds(lambda first, second: first + second, _GRPC_WEB_FRAME, _GRPC_WEB_FRAME),
)
# The request's framing headers are the test's own (a content-type or grpc-timeout of
# the fuzzer's would send the body elsewhere or bound the call differently).
GRPC_WEB_HEADERS = st.lists(
    _HEADER.filter(lambda header: header[0] not in ("content-type", "grpc-timeout")),
    max_size=6,
)


@FUZZ
@given(
    payload=GRPC_WEB_FRAMES,
    headers=GRPC_WEB_HEADERS,
    method=st.sampled_from(["Generate", "ListModels", "Complete", "Nope"]),
)
def test_grpc_web(
    client: httpx.Client, payload: bytes, headers: list[tuple[str, bytes]], method: str
) -> None:
    note(f"{method} {payload[:40]!r} headers {[(k, v[:40], len(v)) for k, v in headers]}")
    answer = grpc_web(client, method, payload, headers)
    if answer.status_code >= 400:  # refused by Envoy before gRPC-Web (e.g. 431)
        assert_typed(answer, f"gRPC-Web {method}")
        return
    statuses = grpc_web_statuses(answer)
    assert statuses, f"{method}: no grpc-status in {answer.status_code} {answer.content[:200]!r}"
    # 2 UNKNOWN and 13 INTERNAL are the gRPC 500s.
    assert not set(statuses) & {"2", "13"}, f"{method}: {statuses} {answer.content[:300]!r}"


def grpc_web(
    client: httpx.Client,
    method: str,
    payload: bytes,
    headers: list[tuple[str, bytes]],
    timeout_s: float = 10.0,
) -> httpx.Response:
    base = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "authorization": f"Bearer {DEV_KEY}",
    }
    return client.post(
        f"/sluice.router.v1.RouterService/{method}",
        headers=as_bytes(base, headers),
        content=payload,
        timeout=timeout_s,
    )


@pytest.mark.parametrize("method", ["ListModels", "Generate"])
@pytest.mark.parametrize(
    "body",
    [b"", b"\x00\x00\x00\x00\x10ab", b"\x80\x00\x00\x00\x00"],
    ids=["empty", "cut", "trailer"],
)
def test_grpc_web_without_a_whole_message_is_answered(
    client: httpx.Client, method: str, body: bytes
) -> None:
    # grpcio's server would wait forever for the message (the edge refuses it first).
    answer = grpc_web(client, method, body, [], timeout_s=3.0)
    assert answer.status_code < 500 and grpc_web_statuses(answer) == ["3"]


def test_grpc_web_compressed_without_an_encoding_is_answered(client: httpx.Client) -> None:
    answer = grpc_web(client, "ListModels", b"\x01\x00\x00\x00\x00", [])
    assert answer.status_code < 500 and grpc_web_statuses(answer) == ["3"]


@FUZZ
@given(
    headers=HEADERS,
    key=st.one_of(st.just(b"dGhlIHNhbXBsZSBub25jZQ=="), _VALUE_BYTES),
    version=st.one_of(st.just(b"13"), _VALUE_BYTES),
    protocol=st.one_of(st.just(b"sluice.converse.v1"), _VALUE_BYTES),
)
def test_websocket_upgrade(
    client: httpx.Client,
    headers: list[tuple[str, bytes]],
    key: bytes,
    version: bytes,
    protocol: bytes,
) -> None:
    upgrade: list[tuple[str, bytes]] = [
        ("sec-websocket-key", key),
        ("sec-websocket-version", version),
        ("sec-websocket-protocol", protocol),
        *headers,
    ]
    base = {"connection": "upgrade", "upgrade": "websocket", "authorization": f"Bearer {DEV_KEY}"}
    answer = send(client, "GET", "/v1/ws", upgrade, None, base)
    if answer.status_code != 101:  # 101: upgraded, a normal answer
        assert_typed(answer, "GET /v1/ws")


def _metric(text: str, name: str) -> list[tuple[str, float]]:
    return [
        (m.group(1), float(m.group(2)))
        for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)
    ]


async def test_monitoring_and_breakers_are_healthy_after_the_fuzzing(suite: RunningSuite) -> None:
    # Runs after the tests above (file order): what they sent must have hurt nothing.
    async with httpx.AsyncClient(timeout=10) as http:
        metrics = await http.get(suite.metrics_url("telemetry"))
        router = (await http.get(suite.metrics_url("router"))).text
    assert metrics.status_code == 200 and "sluice_telemetry_spans_total" in metrics.text
    async with suite.channel("telemetry") as channel:
        stats = await telemetry_pb2_grpc.TelemetryServiceStub(channel).GetStats(
            telemetry_pb2.GetStatsRequest(window_s=300), timeout=10
        )
    assert stats.operations, "GetStats answered but counted nothing"
    for operation in stats.operations:
        assert 0.0 <= operation.error_rate <= 1.0 and operation.count < 10**9, operation
    states = _metric(router, "sluice_router_breaker_state")
    # 0 is closed (router/fallback.py); no breaker may have opened on client input.
    assert all(value == 0.0 for _, value in states), states
