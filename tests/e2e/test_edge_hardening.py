"""Edge hardening of the Envoy front (launcher/envoy/), over HTTP/1.1 and HTTP/2:
body and header limits, the per-connection stream limit, the header timeout, TLS.

Envoy runs alone on a rendered config (the limits act before any upstream is asked),
except for the TLS test of a whole streamed chat, which runs the real suite.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sluice.core.config import load_settings
from sluice.core.grpcx.certs import write_suite_certs
from sluice.launcher.envoy import descriptor_path, render_yaml
from sluice.launcher.settings import EnvoySettings, SuiteSettings, with_certs_dir
from sluice.limiter.settings import LimiterSettings
from sluice.provider.settings import ProviderSettings
from sluice.router.settings import RouterSettings
from sluice.telemetry.settings import TelemetrySettings
from tests.e2e.conftest import DEV_KEY, free_ports, start_envoy, start_suite

MAX_BODY = 4096
STREAMS = 2


@dataclass
class Edge:
    port: int
    admin: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _settings(envoy: dict[str, Any]) -> SuiteSettings:
    dead = free_ports(3)  # nothing listens behind the edge: every limit acts before that
    return SuiteSettings(
        router=load_settings(
            RouterSettings,
            "router",
            data={"router": {"server": {"port": dead[0]}, "http_api": {"port": dead[1]}}},
        ),
        limiter=load_settings(
            LimiterSettings, "limiter", data={"limiter": {"server": {"port": dead[2]}}}
        ),
        provider=load_settings(ProviderSettings, "provider", data={}),
        telemetry=load_settings(TelemetrySettings, "telemetry", data={}),
        envoy=EnvoySettings(**envoy),
        config_path=None,
    )


def _start(tmp_path: Path, **envoy: Any) -> Edge:
    port, admin = free_ports(2)
    settings = _settings(
        {"port": port, "admin_port": admin, "rate_limit": {"enabled": False}, **envoy}
    )
    settings.router.tracing.enabled = False
    write_suite_certs(tmp_path / "certs")  # mtls is the default; Envoy loads its files
    config = tmp_path / "envoy.yaml"
    config.write_text(render_yaml(with_certs_dir(settings, tmp_path / "certs"), descriptor_path()))
    return Edge(port, admin, start_envoy(config, admin))


def _stop(edge: Edge) -> None:
    edge.process.terminate()
    edge.process.wait(timeout=10)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """Envoy with small limits: 4 KiB bodies, 8 KiB of headers, 2 streams per connection."""
    running = _start(
        tmp_path_factory.mktemp("edge"),
        max_request_bytes=MAX_BODY,
        limits={
            "max_request_headers_kb": 8,
            "max_concurrent_streams": STREAMS,
            "request_headers_timeout_s": 1,
        },
    )
    yield running
    _stop(running)


def _chat(size: int) -> bytes:
    body = {"model": "default", "messages": [{"role": "user", "content": "x" * size}]}
    return json.dumps(body).encode()


def _assert_json_error(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["details"][0]["reason"] == reason


# -- body size --------------------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True])
def test_an_oversized_chat_body_is_refused_with_413_json(edge: Edge, http2: bool) -> None:
    # (The transcoded routes' limit acts once a live router is there: see the TLS suite.)
    with httpx.Client(http1=not http2, http2=http2, timeout=10) as client:
        response = client.post(
            edge.url + "/v1/chat/completions",
            content=_chat(MAX_BODY * 2),
            headers={"content-type": "application/json", "authorization": f"Bearer {DEV_KEY}"},
        )
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    _assert_json_error(response, 413, "INVALID_INPUT")


@pytest.mark.parametrize("http2", [False, True])
def test_a_body_within_the_limit_passes_the_edge(edge: Edge, http2: bool) -> None:
    # The router behind is down: reaching it (503) proves the edge let the body through.
    with httpx.Client(http1=not http2, http2=http2, timeout=10) as client:
        response = client.post(
            edge.url + "/v1/chat/completions",
            content=_chat(MAX_BODY // 2),
            headers={"content-type": "application/json"},
        )
    _assert_json_error(response, 503, "SERVICE_UNAVAILABLE")


def test_a_chunked_body_without_length_is_limited_too(edge: Edge) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"x" * 1024

    with httpx.Client(timeout=10) as client:
        response = client.post(
            edge.url + "/v1/chat/completions",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
    _assert_json_error(response, 413, "INVALID_INPUT")


# -- headers ----------------------------------------------------------------------------


def test_oversized_headers_are_refused_with_431_over_http1(edge: Edge) -> None:
    response = httpx.get(edge.url + "/v1/models", headers={"x-big": "y" * 10 * 1024}, timeout=10)
    assert response.status_code == 431, response.text


def test_oversized_headers_reset_the_stream_over_http2(edge: Edge) -> None:
    # HTTP/2 has no status for it: the stream is reset and the request fails; the
    # connection survives for the next request.
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(edge.url + "/v1/models", headers={"x-big": "y" * 10 * 1024})
        assert client.get(edge.url + "/openapi.json").status_code == 200


def test_headers_within_the_limit_pass(edge: Edge) -> None:
    response = httpx.get(edge.url + "/openapi.json", headers={"x-ok": "y" * 4096}, timeout=10)
    assert response.status_code == 200


# -- per-connection streams, header timeout ---------------------------------------------


def _h2_connect(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _h2_events(sock: socket.socket, conn: h2.connection.H2Connection) -> list[h2.events.Event]:
    data = sock.recv(65536)
    if not data:
        return []
    events = conn.receive_data(data)
    sock.sendall(conn.data_to_send())
    return events


def _open_stream(conn: h2.connection.H2Connection, stream_id: int, port: int) -> None:
    """HEADERS of a chat request whose body never comes: the edge holds it open."""
    conn.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/json"),
        ],
    )


def _wait_for(
    sock: socket.socket, conn: h2.connection.H2Connection, kind: type[h2.events.Event]
) -> h2.events.Event | None:
    """The next event of `kind` within 5 s (None if the connection closes first)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            events = _h2_events(sock, conn)
        except ConnectionResetError:
            return None
        if not events:
            return None  # closed by the edge
        for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"no {kind.__name__} within 5 s")


def test_the_edge_advertises_and_enforces_its_stream_limit(edge: Edge) -> None:
    sock, conn = _h2_connect(edge.port)
    try:
        settings = _wait_for(sock, conn, h2.events.RemoteSettingsChanged)
        assert isinstance(settings, h2.events.RemoteSettingsChanged)
        limit = settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
        assert limit.new_value == STREAMS
        for stream_id in (1, 3):  # two requests waiting for their bodies: both open
            _open_stream(conn, stream_id, edge.port)
        conn.ping(b"sluice!!")
        sock.sendall(conn.data_to_send())
        assert _wait_for(sock, conn, h2.events.PingAckReceived) is not None  # still healthy
        # A well-behaved client library refuses a third stream by itself...
        with pytest.raises(h2.exceptions.TooManyStreamsError):
            _open_stream(conn, 5, edge.port)
        # ...and a client that ignores the limit loses its connection (a protocol error).
        conn.remote_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100}
        )
        _open_stream(conn, 5, edge.port)
        sock.sendall(conn.data_to_send())
        assert _wait_for(sock, conn, h2.events.ResponseReceived) is None
    finally:
        sock.close()


def test_a_client_that_never_finishes_its_headers_is_cut_off(edge: Edge) -> None:
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n")  # and nothing more
        started = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        waited = time.monotonic() - started
    # request_headers_timeout_s is 1: Envoy answers 408 and closes, long before 10 s.
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert 0.5 <= waited < 5


def test_limits_render_from_settings(tmp_path: Path) -> None:
    settings = _settings(
        {"limits": {"idle_timeout_s": 30, "max_headers_count": 50}, "max_request_bytes": 2048}
    )
    settings.router.security.mtls = False  # neither edge nor upstream certificates
    rendered = render_yaml(settings, descriptor_path())
    assert "idle_timeout: 30s" in rendered
    assert "max_headers_count: 50" in rendered
    assert "max_request_bytes: 2048" in rendered
    assert "transport_socket" not in rendered  # no certificates, no TLS


# -- TLS --------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 and localhost, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sluice-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "edge.crt", directory / "edge.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Edge, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(directory)
    running = _start(directory, tls={"cert_path": str(cert), "key_path": str(key)})
    yield running, cert
    _stop(running)


@pytest.mark.parametrize("http2", [False, True])
def test_the_edge_serves_https_over_http1_and_http2(
    tls_edge: tuple[Edge, Path], http2: bool
) -> None:
    edge, cert = tls_edge
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(http1=not http2, http2=http2, verify=context, timeout=10) as client:
        response = client.get(f"https://127.0.0.1:{edge.port}/openapi.json")
        missing = client.get(f"https://127.0.0.1:{edge.port}/no/such/path")
    assert response.status_code == 200
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert response.json()["openapi"].startswith("3.")
    _assert_json_error(missing, 404, "UNSUPPORTED_OPERATION")


def test_plain_http_to_the_tls_port_fails(tls_edge: tuple[Edge, Path]) -> None:
    edge, _ = tls_edge
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{edge.port}/openapi.json", timeout=5)


def test_an_untrusted_certificate_is_refused_by_the_client(tls_edge: tuple[Edge, Path]) -> None:
    edge, _ = tls_edge
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{edge.port}/openapi.json", timeout=5)


def test_tls_settings_need_both_files(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path)
    with pytest.raises(ValueError, match="both cert_path and key_path"):
        EnvoySettings(tls={"cert_path": str(cert)})
    with pytest.raises(ValueError, match="not a readable file"):
        EnvoySettings(tls={"cert_path": str(cert), "key_path": str(tmp_path / "missing.key")})


@dataclass
class LiveTls:
    url: str
    context: ssl.SSLContext


@pytest.fixture(scope="module")
def live_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTls]:
    """The whole suite behind a TLS edge with a 4 KiB body limit."""
    directory = tmp_path_factory.mktemp("live-tls")
    cert, key = _self_signed(directory)
    envoy = {"tls": {"cert_path": str(cert), "key_path": str(key)}, "max_request_bytes": MAX_BODY}
    with start_suite(directory, envoy=envoy) as suite:
        yield LiveTls(
            f"https://127.0.0.1:{suite.ports['envoy']}",
            ssl.create_default_context(cafile=str(cert)),
        )


async def test_a_streamed_chat_over_https_with_the_openai_sdk(live_tls: LiveTls) -> None:
    # The SDK's own client class (its HTTP stack), trusting the test's CA, over HTTP/2.
    async with openai.DefaultAsyncHttpxClient(http2=True, verify=live_tls.context) as http:
        sdk = openai.AsyncOpenAI(
            api_key=DEV_KEY, base_url=f"{live_tls.url}/v1", http_client=http, max_retries=0
        )
        stream = await sdk.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "hello over TLS"}],
            max_tokens=5,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("http2", [False, True])
def test_transcoded_json_over_https_streams_and_is_body_limited(
    live_tls: LiveTls, http2: bool
) -> None:
    headers = {"content-type": "application/json", "authorization": f"Bearer {DEV_KEY}"}
    with httpx.Client(http1=not http2, http2=http2, verify=live_tls.context, timeout=30) as client:
        small = client.post(
            f"{live_tls.url}/v1/generate",
            content=json.dumps(
                {
                    "model": "default",
                    "max_tokens": 3,
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ),
            headers=headers,
        )
        big = client.post(
            f"{live_tls.url}/v1/generate", content=_chat(MAX_BODY * 2), headers=headers
        )
    assert small.status_code == 200, small.text
    assert small.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert small.headers["content-type"].startswith("text/event-stream")
    assert '"complete"' in small.text
    _assert_json_error(big, 413, "INVALID_INPUT")
