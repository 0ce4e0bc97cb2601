"""Request framing of unary-request gRPC and gRPC-Web calls at the edge
(launcher/envoy/grpc_framing.py; docs/envoy.md, "Request framing").

A body that holds no whole message would hang in grpcio's server, and a message flagged
compressed without a grpc-encoding is INTERNAL in gRPC core: Envoy answers both itself,
at once, with a typed INVALID_ARGUMENT (docs/errors.md). Sent hand-framed, as gRPC-Web
over HTTP/1.1 and as raw HTTP/2 frames (grpc's own clients always frame correctly).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import struct
import time
import zlib
from urllib.parse import urlparse

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from sluice.launcher.envoy.grpc_framing import OVERSIZED_MESSAGE, REFUSALS, REQUEST_BUFFER_LIMIT
from sluice.router.v1 import router_pb2, router_pb2_grpc
from tests.e2e.conftest import DEV_KEY, RunningSuite

pytestmark = pytest.mark.e2e

SERVICE = "/sluice.router.v1.RouterService"
ORIGIN = "http://app.example.test"
AUTH = ("authorization", f"Bearer {DEV_KEY}")
MESSAGES = {key: message for key, _, message in REFUSALS}
GENERATE = router_pb2.GenerateRequest(
    model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=4
).SerializeToString()
LIST = router_pb2.ListModelsRequest().SerializeToString()


def frame(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


# Bodies with no (or not exactly one) whole message, and the refusal each gets.
BAD_BODIES = {
    "empty": (b"", "no_message"),
    "prefix only": (b"\x00\x00\x00", "no_message"),
    "truncated": (b"\x00\x00\x00\x00\x10ab", "truncated"),
    "trailer frame": (frame(b"grpc-status:0\r\n", 0x80), "trailer"),
    "empty trailer frame": (b"\x80\x00\x00\x00\x00", "trailer"),
    "unknown flags": (frame(b"", 0x02), "flags"),
    "two messages": (frame(b"") + frame(b""), "extra"),
    "compressed without grpc-encoding": (b"\x01\x00\x00\x00\x00", "no_encoding"),
}
METHODS = ("ListModels", "Generate", "Complete")


def grpc_web(suite: RunningSuite, method: str, body: bytes, **headers: str) -> httpx.Response:
    with httpx.Client(http1=True, http2=False, timeout=5) as client:
        return client.post(
            f"{suite.edge}{SERVICE}/{method}",
            content=body,
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                "origin": ORIGIN,
                "authorization": f"Bearer {DEV_KEY}",
                **headers,
            },
        )


def web_status(response: httpx.Response) -> dict[str, str]:
    """grpc-status and friends: headers (trailers-only) or the trailer frame."""
    body = response.content
    if "grpc-status" in response.headers:
        return dict(response.headers)
    pos = 0
    while pos + 5 <= len(body):
        flags, length = struct.unpack(">BI", body[pos : pos + 5])
        if flags & 0x80:
            lines = body[pos + 5 : pos + 5 + length].decode().split("\r\n")
            return {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        pos += 5 + length
    raise AssertionError(f"no grpc-status in {response.status_code} {body[:200]!r}")


def h2_call(
    suite: RunningSuite, method: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()
) -> dict[str, str]:
    """One native gRPC call as raw HTTP/2 frames; every header and trailer of the answer,
    and `data` (bytes of messages received)."""
    port = urlparse(suite.edge).port
    assert port is not None
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    answer: dict[str, str] = {}
    received = 0

    def read(sock: socket.socket) -> bool:
        nonlocal received
        data = sock.recv(65535)
        assert data, f"connection closed before the call ended: {answer}"
        for event in connection.receive_data(data):
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                answer.update((bytes(k).decode(), bytes(v).decode()) for k, v in event.headers)
            elif isinstance(event, h2.events.DataReceived):
                received += len(event.data)
                connection.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, h2.events.StreamReset):
                raise AssertionError(f"stream reset ({event.error_code}): {answer}")
            elif isinstance(event, h2.events.StreamEnded):
                return True
        sock.sendall(connection.data_to_send())
        return False

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        connection.initiate_connection()
        connection.send_headers(
            1,
            [(":method", "POST"), (":scheme", "http"), (":path", f"{SERVICE}/{method}"),
             (":authority", "sluice"), ("content-type", "application/grpc"),
             ("te", "trailers"), AUTH, *extra],
            end_stream=not body,
        )  # fmt: skip
        sent = 0
        while sent < len(body):  # within the flow-control window Envoy grants
            room = min(connection.local_flow_control_window(1), connection.max_outbound_frame_size)
            if room == 0:
                sock.sendall(connection.data_to_send())
                if read(sock):  # answered before the whole body was sent
                    return {**answer, "data": str(received)}
                continue
            chunk = body[sent : sent + room]
            sent += len(chunk)
            connection.send_data(1, chunk, end_stream=sent == len(body))
        sock.sendall(connection.data_to_send())
        while not read(sock):
            pass
    return {**answer, "data": str(received)}


def assert_refused(status: dict[str, str], key: str) -> None:
    """A typed refusal: the code, message and google.rpc.Status REFUSALS give `key`."""
    error_type = next(error for k, error, _ in REFUSALS if k == key)
    code = str(error_type("").code.value[0])
    assert status.get("grpc-status") == code, status
    assert status.get("grpc-message") == MESSAGES[key], status
    details = status_pb2.Status.FromString(
        base64.b64decode(status["grpc-status-details-bin"] + "==")
    )
    info = error_details_pb2.ErrorInfo()
    assert details.code == int(code) and details.details[0].Unpack(info), details
    assert info.reason == error_type.reason and info.domain == "sluice.dev", info


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_grpc_web_bad_framing_is_refused_at_once(
    suite: RunningSuite, method: str, case: str
) -> None:
    body, key = BAD_BODIES[case]
    started = time.monotonic()
    response = grpc_web(suite, method, body)
    assert time.monotonic() - started < 2, "the edge did not answer at once"
    # Well-formed gRPC-Web: HTTP 200, trailers-only, readable by a browser (CORS).
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/grpc-web")
    assert response.content == b""
    assert response.headers.get("access-control-allow-origin") == ORIGIN
    assert "grpc-status" in response.headers["access-control-expose-headers"]
    assert_refused(dict(response.headers), key)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_native_grpc_bad_framing_is_refused_at_once(
    suite: RunningSuite, method: str, case: str
) -> None:
    body, key = BAD_BODIES[case]
    answer = h2_call(suite, method, body)
    assert answer[":status"] == "200" and answer["content-type"] == "application/grpc", answer
    assert_refused(answer, key)


def compress(encoding: str, data: bytes) -> bytes:
    """What a gRPC client sends under grpc-encoding gzip or deflate (zlib format)."""
    return gzip.compress(data) if encoding == "gzip" else zlib.compress(data)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_message_with_its_encoding_is_served(
    suite: RunningSuite, encoding: str
) -> None:
    body = frame(compress(encoding, LIST), 1)
    response = grpc_web(suite, "ListModels", body, **{"grpc-encoding": encoding})
    assert response.status_code == 200 and web_status(response)["grpc-status"] == "0"
    flags, length = struct.unpack(">BI", response.content[:5])
    assert flags == 0, response.headers  # the client sent no grpc-accept-encoding
    models = router_pb2.ListModelsResponse.FromString(response.content[5 : 5 + length]).models
    assert "default" in {m.id for m in models}
    answer = h2_call(suite, "ListModels", body, (("grpc-encoding", encoding),))
    assert answer["grpc-status"] == "0" and int(answer["data"]) > 5, answer


def test_identity_encoding_on_a_plain_message_is_served(suite: RunningSuite) -> None:
    # grpcio itself answers INTERNAL to "grpc-encoding: identity"; the edge drops it.
    response = grpc_web(suite, "ListModels", frame(LIST), **{"grpc-encoding": "identity"})
    assert web_status(response)["grpc-status"] == "0", response.content
    answer = h2_call(suite, "ListModels", frame(LIST), (("grpc-encoding", "identity"),))
    assert answer["grpc-status"] == "0", answer
    # Identity is no compression: a message flagged compressed is still refused.
    flagged = grpc_web(suite, "ListModels", frame(LIST, 1), **{"grpc-encoding": "identity"})
    assert_refused(dict(flagged.headers), "no_encoding")


def test_an_unsupported_encoding_is_unimplemented(suite: RunningSuite) -> None:
    response = grpc_web(suite, "Generate", frame(GENERATE, 1), **{"grpc-encoding": "br"})
    assert response.status_code == 200
    assert_refused(dict(response.headers), "encoding")
    # The gRPC compression spec: tell the client what it may use instead.
    assert response.headers["grpc-accept-encoding"] == "identity, gzip, deflate"


def test_a_body_over_the_buffer_limit_is_invalid_argument(suite: RunningSuite) -> None:
    body = frame(b"x" * REQUEST_BUFFER_LIMIT)
    response = grpc_web(suite, "ListModels", body)
    assert response.status_code == 200, response.headers
    assert response.headers["grpc-status"] == "3", response.headers
    assert response.headers["grpc-message"] == OVERSIZED_MESSAGE
    # Over HTTP/2 flow control may pass a body just past the limit on to the router,
    # whose own limit (the same size) answers RESOURCE_EXHAUSTED; either is typed.
    answer = h2_call(suite, "ListModels", body)
    assert answer["grpc-status"] in ("3", "8"), answer
    answer = h2_call(suite, "ListModels", frame(b"x" * 4 * REQUEST_BUFFER_LIMIT))
    assert answer["grpc-status"] == "3" and answer["grpc-message"] == OVERSIZED_MESSAGE, answer


def test_well_framed_calls_are_served(suite: RunningSuite) -> None:
    for method, body in (("ListModels", LIST), ("Generate", GENERATE)):
        response = grpc_web(suite, method, frame(body))
        assert web_status(response)["grpc-status"] == "0", (method, response.content[:200])
        answer = h2_call(suite, method, frame(body))
        assert answer["grpc-status"] == "0" and int(answer["data"]) > 5, (method, answer)


async def test_converse_is_not_buffered(suite: RunningSuite) -> None:
    """A turn's events arrive while the client still holds its request stream open: the
    edge passes Converse's messages on as they come (buffering would wait for the end)."""
    prompt = router_pb2.ConverseRequest(
        prompt=router_pb2.ConversePrompt(
            turn_id="t1", request=router_pb2.GenerateRequest.FromString(GENERATE)
        )
    )
    address = suite.edge.removeprefix("http://")
    async with grpc.aio.insecure_channel(address) as channel:
        call = router_pb2_grpc.RouterServiceStub(channel).Converse(metadata=(AUTH,), timeout=20)
        await call.write(prompt)  # and no done_writing(): the request stream stays open
        kinds: list[str] = []
        while "complete" not in kinds:
            event = await asyncio.wait_for(call.read(), timeout=10)
            assert event is not grpc.aio.EOF, kinds
            assert event.turn_id == "t1", event
            kinds.append(event.event.WhichOneof("event"))
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    assert kinds[0] == "metadata" and "data" in kinds, kinds
