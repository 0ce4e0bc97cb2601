"""The supervisor's own Prometheus endpoint: which parts run, restart, or crash-loop.

Served by `sluice up` on `supervisor.metrics_port` (the `sluice-launcher` job of
deploy/prometheus/prometheus.yml); the alert rules are in deploy/prometheus/rules/runtime.yml.
"""

from __future__ import annotations

from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

_LABELS = ("part", "role")


class SupervisorMetrics:
    """Per-part gauges and counters in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.up = Gauge(
            "sluice_launcher_part_up",
            "1 while the part's process runs, 0 while it is down.",
            _LABELS,
            registry=self.registry,
        )
        self.exits = Counter(
            "sluice_launcher_part_exits",
            "Times the part's process exited on its own (crashes, kill -9, failed starts).",
            _LABELS,
            registry=self.registry,
        )
        self.restarts = Counter(
            "sluice_launcher_part_restarts",
            "Times the supervisor restarted the part.",
            _LABELS,
            registry=self.registry,
        )
        self.crash_looping = Gauge(
            "sluice_launcher_part_crash_looping",
            "1 once the part exited more often than the restart budget allows: it is left "
            "stopped until `sluice up` is restarted.",
            _LABELS,
            registry=self.registry,
        )
        self.recovery = Gauge(
            "sluice_launcher_part_last_recovery_seconds",
            "Seconds from the part's last exit being seen to it serving again.",
            _LABELS,
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None
        self.port = 0

    def add(self, part: str, role: str) -> None:
        """Create the part's series (so a part that never failed shows zeros)."""
        self.up.labels(part, role).set(0)
        self.exits.labels(part, role)
        self.restarts.labels(part, role)
        self.crash_looping.labels(part, role).set(0)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics endpoint; returns its port (raises OSError if taken)."""
        self._server, self._thread = start_http_server(port, host, self.registry)
        self.port = int(self._server.server_port)
        return self.port

    def close(self) -> None:
        """Stop the endpoint."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
