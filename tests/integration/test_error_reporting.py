"""Sentry reporting against a local capturing endpoint that speaks Sentry's envelope API."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

from sluice.common.v1 import common_pb2
from sluice.limiter.service import build_server as build_limiter
from sluice.provider.service import build_server as build_provider
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.wiring import build_server as build_router
from tests.support import (
    API_KEY,
    AUTH,
    FAST_BACKEND,
    ServiceStack,
    collect,
    limiter_settings,
    provider_settings,
    router_settings,
)


class Capture:
    """Envelopes POSTed to /api/<project>/envelope/, decoded into their items."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.arrived = threading.Condition()

    def add(self, body: bytes) -> None:
        self.raw.append(body)
        lines = body.split(b"\n")
        # An envelope: header line, then (item header, payload) pairs.
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if json.loads(header).get("type") == "event":
                with self.arrived:
                    self.events.append(json.loads(payload))
                    self.arrived.notify_all()

    def wait(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.events) >= count, timeout=timeout_s)
        return list(self.events)


@pytest.fixture
def sentry() -> Iterator[tuple[str, Capture]]:
    capture = Capture()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if "/api/42/envelope/" in self.path:
                capture.add(body)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://publickey@127.0.0.1:{server.server_port}/42", capture
    finally:
        server.shutdown()
        server.server_close()


async def test_server_side_failures_reach_sentry_without_secrets(
    stack: ServiceStack, sentry: tuple[str, Capture]
) -> None:
    dsn, capture = sentry
    limiter = await stack.start(build_limiter(limiter_settings()))
    provider = await stack.start(
        build_provider(provider_settings(FAST_BACKEND, fault_injection=True))
    )
    router = await stack.start(
        build_router(
            router_settings(
                limiter,
                provider,
                error_reporting={"sentry_dsn": dsn, "environment": "test"},
                resilience={"retry": {"max_attempts": 1}},
            )
        )
    )
    stub = router_pb2_grpc.RouterServiceStub(stack.channel(router))
    request = router_pb2.GenerateRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content="secret prompt text")],
    )
    # A client mistake is not reported ...
    with pytest.raises(grpc.aio.AioRpcError):
        await collect(stub.Generate(router_pb2.GenerateRequest(model="default"), metadata=AUTH))
    # ... a failing upstream is.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.Generate(request, metadata=(*AUTH, ("x-sluice-fault", "error_rate=1"))))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await stack.stop(router)  # flushes the reporter

    events = capture.wait(1)
    assert len(events) == 1
    event = events[0]
    assert event["tags"]["reason"] == "SERVICE_UNAVAILABLE"
    assert event["tags"]["service"] == "router"
    assert event["tags"]["method"] == "/sluice.router.v1.RouterService/Generate"
    assert len(event["tags"]["request_id"]) > 0
    assert event["environment"] == "test"
    assert event["server_name"] == "router"
    everything = b"".join(capture.raw)
    assert API_KEY.encode() not in everything
    assert b"secret prompt text" not in everything
