"""The /metrics HTTP server: serves scrapes, sleeps between them, stops at once."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from sluice.core.telemetry.metrics import MetricsServer, serve_metrics


def _serve(registry: CollectorRegistry) -> tuple[MetricsServer, int, threading.Thread]:
    before = set(threading.enumerate())
    server, port = serve_metrics("127.0.0.1", 0, registry)
    (thread,) = [t for t in threading.enumerate() if t not in before]
    assert thread.name == "metrics-http"
    return server, port, thread


def test_serves_a_scrape_and_stops_promptly_though_it_never_polls() -> None:
    registry = CollectorRegistry()
    Counter("sluice_test_things", "Things.", registry=registry).inc(3)
    server, port, thread = _serve(registry)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert "sluice_test_things_total 3.0" in response.read().decode()

    # The serving thread waits in poll() with no timeout; stop() must still wake it.
    started = time.monotonic()
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(5)
    assert not stopper.is_alive(), "stop() hung: the serving thread was never woken"
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass


def test_stop_without_any_scrape() -> None:
    server, _, thread = _serve(CollectorRegistry())
    server.stop()
    thread.join(5)
    assert not thread.is_alive()
