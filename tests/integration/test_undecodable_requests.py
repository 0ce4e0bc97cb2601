"""A unary request whose bytes are not the method's message gets a typed INVALID_ARGUMENT
(core/grpcx/handlers.py), not UNKNOWN or a call that never ends (found by
tests/e2e/test_fuzz_edge.py). Sent as raw HTTP/2 frames: grpc's own clients always send
a valid message."""

from __future__ import annotations

import asyncio
import socket
import struct

import h2.config
import h2.connection
import h2.events

from tests.support import AUTH, ServiceStack, start_suite

GARBAGE = b"\xeeC\xf4\xda}\x80\x84\xc5\xbc\xa1\x11W\xad\x9f\xb8z\xe9d\xb1"


def raw_call(port: int, path: str, message: bytes) -> dict[bytes, bytes]:
    """One gRPC call over a plain socket; every header and trailer of the answer."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    answer: dict[bytes, bytes] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        connection.initiate_connection()
        connection.send_headers(
            1,
            [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "t"),
             ("content-type", "application/grpc"), ("te", "trailers"), AUTH[0]],
        )  # fmt: skip
        connection.send_data(1, b"\x00" + struct.pack(">I", len(message)) + message, True)
        sock.sendall(connection.data_to_send())
        while True:
            data = sock.recv(65535)
            assert data, "connection closed before the call ended"
            for event in connection.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    answer.update((bytes(k), bytes(v)) for k, v in event.headers)
                if isinstance(event, h2.events.StreamEnded):
                    return answer
            sock.sendall(connection.data_to_send())


async def test_an_undecodable_unary_request_is_invalid_argument(stack: ServiceStack) -> None:
    suite = await start_suite(stack)
    for method in ("ListModels", "Generate", "Complete"):
        answer = await asyncio.to_thread(
            raw_call, suite.router.port, f"/sluice.router.v1.RouterService/{method}", GARBAGE
        )
        assert answer[b"grpc-status"] == b"3", (method, answer)
        assert (
            answer[b"grpc-message"] == f"the request body is not a valid {method} message".encode()
        )
