"""Prometheus metrics every service exposes, each service on its own registry and port."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class RpcMetrics:
    """RED metrics per RPC method: requests by final status code and latency."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._requests = Counter(
            "sluice_rpc_requests",
            "RPCs served, by method and final gRPC status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self._latency = Histogram(
            "sluice_rpc_duration_seconds",
            "Time from RPC start to final status (whole stream for streaming RPCs).",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._errors = Counter(
            "sluice_errors",
            "Errors returned to callers, by reason (docs/errors.md).",
            ["service", "method", "reason"],
            registry=registry,
        )
        self._service = service
        self._latency_children: dict[str, Histogram] = {}
        self._request_children: dict[tuple[str, str], Counter] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Record one finished RPC (children are cached: label lookup is the costly part)."""
        counter = self._request_children.get((method, code))
        if counter is None:
            counter = self._requests.labels(self._service, method, code)
            self._request_children[(method, code)] = counter
        counter.inc()
        histogram = self._latency_children.get(method)
        if histogram is None:
            histogram = self._latency.labels(self._service, method)
            self._latency_children[method] = histogram
        histogram.observe(seconds)

    def count_error(self, method: str, reason: str) -> None:
        """Record one error by reason."""
        self._errors.labels(self._service, method, reason).inc()


class _ConstantLabels(Collector):
    """Another registry's series, each with labels added (e.g. a rollout's `pool`)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        self._registry = registry
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labelled.add_sample(
                    sample.name,
                    {**sample.labels, **self._labels},
                    sample.value,
                    sample.timestamp,
                    sample.exemplar,
                )
            yield labelled


def with_labels(registry: CollectorRegistry, labels: dict[str, str]) -> CollectorRegistry:
    """A registry exporting `registry`'s series with `labels` added to each (itself when
    there are none)."""
    if not labels:
        return registry
    outer = CollectorRegistry(auto_describe=False)
    outer.register(_ConstantLabels(registry, labels))
    return outer


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def stop(self) -> None:
        """Stop serving and release the port (blocks until the serving thread is done).

        The serving thread sleeps in poll() with no timeout, so an idle service pays no
        wake-ups for it (a poll interval costs every process tens of wake-ups a second).
        Shutting the listening socket down wakes that poll at once, and keeps it waking
        until serve_forever sees the shutdown request.
        """
        with contextlib.suppress(OSError):  # already shut, or never connected
            self.socket.shutdown(socket.SHUT_RDWR)
        self.shutdown()
        self.server_close()


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> tuple[MetricsServer, int]:
    """Start the /metrics HTTP server in a daemon thread; returns (server, bound port).

    Stop it with its `stop()` (prometheus_client's own start_http_server polls for
    shutdown every 0.5 s; ours sleeps until a scrape or the stop).
    """
    server = make_server(
        host, port, make_wsgi_app(registry), MetricsServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": None},
        daemon=True,
        name="metrics-http",
    )
    thread.start()
    return server, int(server.server_port)
