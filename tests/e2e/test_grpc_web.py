"""gRPC-Web through Envoy, hand-framed over HTTP/1.1 as a browser sends it, with CORS.

A gRPC-Web body is frames of a flag byte, a 4-byte big-endian length and the payload:
flag 0x00 is a protobuf message, 0x80 the trailers as HTTP/1 header lines. A reply that
fails before any message is "trailers-only": grpc-status/grpc-message arrive as HTTP
headers, which a browser's script can read only when CORS exposes them.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import httpx
import pytest

from sluice.launcher.envoy import GRPC_WEB_ALLOW_HEADERS
from sluice.router.v1 import router_pb2
from tests.e2e.conftest import DEV_KEY, RunningSuite

pytestmark = pytest.mark.e2e

SERVICE = "/sluice.router.v1.RouterService"
ORIGIN = "http://app.example.test"
BROWSER_HEADERS = {
    "content-type": "application/grpc-web+proto",
    "x-grpc-web": "1",
    "x-user-agent": "grpc-web-javascript/0.1",
    "origin": ORIGIN,
}


def frame(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def unframe(body: bytes) -> tuple[list[bytes], dict[str, str] | None]:
    """(data frames, trailers or None); fails on a truncated frame."""
    messages: list[bytes] = []
    trailers: dict[str, str] | None = None
    pos = 0
    while pos < len(body):
        assert len(body) - pos >= 5, f"truncated frame header at {pos}: {body[pos:]!r}"
        flags, length = struct.unpack(">BI", body[pos : pos + 5])
        payload = body[pos + 5 : pos + 5 + length]
        assert len(payload) == length, "truncated frame payload"
        pos += 5 + length
        if flags & 0x80:
            trailers = {}
            for line in payload.decode().split("\r\n"):
                if ":" in line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def post(suite: RunningSuite, method: str, message: bytes, **headers: str) -> httpx.Response:
    with httpx.Client(http1=True, http2=False, timeout=30) as client:
        return client.post(
            f"{suite.edge}{SERVICE}/{method}",
            content=frame(message),
            headers={**BROWSER_HEADERS, **headers},
        )


def assert_cors(response: httpx.Response) -> None:
    assert response.headers.get("access-control-allow-origin") == ORIGIN
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message"} <= exposed


def test_list_models_over_grpc_web_http1(suite: RunningSuite) -> None:
    response = post(suite, "ListModels", b"", authorization=f"Bearer {DEV_KEY}")
    assert response.status_code == 200, response.text
    assert response.http_version == "HTTP/1.1"
    assert response.headers["content-type"].startswith("application/grpc-web")
    assert_cors(response)
    messages, trailers = unframe(response.content)
    assert trailers is not None and trailers["grpc-status"] == "0"
    assert len(messages) == 1
    models = router_pb2.ListModelsResponse.FromString(messages[0]).models
    assert "default" in {m.id for m in models}


def test_generate_streams_frames_incrementally(suite: RunningSuite) -> None:
    request = router_pb2.GenerateRequest(
        model="default",
        messages=[{"role": "user", "content": "Tell me about sluices"}],
        max_tokens=8,
    )
    arrivals: list[tuple[float, bytes]] = []
    with (
        httpx.Client(http1=True, http2=False, timeout=30) as client,
        client.stream(
            "POST",
            f"{suite.edge}{SERVICE}/Generate",
            content=frame(request.SerializeToString()),
            headers={**BROWSER_HEADERS, "authorization": f"Bearer {DEV_KEY}"},
        ) as response,
    ):
        assert response.status_code == 200
        assert_cors(response)
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic(), chunk))
    body = b"".join(chunk for _, chunk in arrivals)
    messages, trailers = unframe(body)
    assert trailers is not None and trailers["grpc-status"] == "0", trailers
    events = [router_pb2.GenerateEvent.FromString(m) for m in messages]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "metadata" and kinds[-1] == "complete", kinds
    assert kinds.count("data") >= 2
    complete = events[-1].complete
    data_tokens = sum(e.data.token_count for e in events if e.HasField("data"))
    assert complete.usage.output_tokens == data_tokens > 0
    assert len(events[0].metadata.trace_id) == 32
    # The simulated model paces 20 tokens/s: frames must arrive as made, not at the end.
    assert arrivals[-1][0] - arrivals[0][0] > 0.15, "the stream arrived in one piece"


def test_bad_key_is_grpc_status_16_with_cors_headers(suite: RunningSuite) -> None:
    response = post(suite, "ListModels", b"", authorization="Bearer sk-not-a-key")
    assert response.status_code == 200  # gRPC-Web errors are statuses, not HTTP codes
    assert_cors(response)
    messages, trailers = unframe(response.content)
    assert messages == []
    # Trailers-only: the status rides in the headers (or, equally valid, a trailer frame).
    status: dict[str, Any] = trailers or dict(response.headers)
    assert status["grpc-status"] == "16", status
    assert "key" in status.get("grpc-message", "").lower()


def test_bad_key_mid_call_on_generate_is_also_16(suite: RunningSuite) -> None:
    request = router_pb2.GenerateRequest(
        model="default", messages=[{"role": "user", "content": "x"}], max_tokens=4
    )
    response = post(suite, "Generate", request.SerializeToString(), authorization="Bearer bad")
    assert_cors(response)
    messages, trailers = unframe(response.content)
    status = trailers or dict(response.headers)
    assert messages == [] and status["grpc-status"] == "16", status


def test_invalid_request_is_grpc_status_3(suite: RunningSuite) -> None:
    request = router_pb2.GenerateRequest(model="default", messages=[], max_tokens=4)
    response = post(
        suite, "Generate", request.SerializeToString(), authorization=f"Bearer {DEV_KEY}"
    )
    _, trailers = unframe(response.content)
    status = trailers or dict(response.headers)
    assert status["grpc-status"] == "3", status


def test_grpc_web_text_base64(suite: RunningSuite) -> None:
    with httpx.Client(http1=True, http2=False, timeout=30) as client:
        response = client.post(
            f"{suite.edge}{SERVICE}/ListModels",
            content=base64.b64encode(frame(b"")),
            headers={
                **BROWSER_HEADERS,
                "content-type": "application/grpc-web-text",
                "accept": "application/grpc-web-text",
                "authorization": f"Bearer {DEV_KEY}",
            },
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/grpc-web-text")
    messages, trailers = unframe(base64.b64decode(response.content))
    assert trailers is not None and trailers["grpc-status"] == "0"
    assert router_pb2.ListModelsResponse.FromString(messages[0]).models


def test_cors_preflight_allows_what_grpc_web_clients_send(suite: RunningSuite) -> None:
    wanted = "content-type,x-grpc-web,x-user-agent,authorization,grpc-timeout,traceparent"
    response = httpx.options(
        f"{suite.edge}{SERVICE}/Generate",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": wanted,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert set(wanted.split(",")) <= allowed <= set(GRPC_WEB_ALLOW_HEADERS)
    assert int(response.headers["access-control-max-age"]) > 0


def test_native_grpc_and_json_routes_still_work(suite: RunningSuite) -> None:
    """The gRPC-Web routes sit before the gRPC ones: they must not capture them."""
    response = httpx.post(
        f"{suite.edge}/v1/complete",
        json={"model": "default", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        headers={"authorization": f"Bearer {DEV_KEY}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert "access-control-allow-origin" not in response.headers
    with httpx.Client(http2=True, http1=False, timeout=30) as client:
        native = client.post(
            f"{suite.edge}{SERVICE}/ListModels",
            content=frame(b""),
            headers={
                "content-type": "application/grpc",
                "te": "trailers",
                "authorization": f"Bearer {DEV_KEY}",
            },
        )
    assert native.headers["content-type"] == "application/grpc"
    assert native.headers.get("grpc-status", "0") == "0"


def test_web_page_is_served_at_root(suite: RunningSuite) -> None:
    page = httpx.get(f"{suite.edge}/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/ui/app.js">' in page.text
    for name, kind in (("app.js", "text/javascript"), ("grpcweb.js", "text/javascript"),
                       ("app.css", "text/css")):  # fmt: skip
        asset = httpx.get(f"{suite.edge}/ui/{name}", timeout=10)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    for bad in ("/ui/missing.js", "/ui/..%2Fservice.py", "/ui/"):
        assert httpx.get(f"{suite.edge}{bad}", timeout=10).status_code == 404, bad
    assert httpx.post(f"{suite.edge}/", timeout=10).status_code == 404
