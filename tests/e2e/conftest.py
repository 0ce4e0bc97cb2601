"""Fixtures that start the real suite (`sluice up`: four services and Envoy) on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from loadtest.chaos import free_ports
from sluice.core.grpcx.tls import ClientTls, TlsFiles, channel_credentials
from sluice.launcher.hot_restart import segment_path

__all__ = ["BIN", "DEV_KEY", "RunningSuite", "free_ports", "start_envoy", "start_suite"]

BIN = Path(sys.executable).parent
DEV_KEY = "sk-sluice-dev"


# Base ids of the Envoys started alone below; their shared-memory segments are removed
# when the session ends (Envoy leaves them behind, see launcher/hot_restart.py).
_ALONE_BASE_IDS: list[int] = []


@pytest.fixture(scope="session", autouse=True)
def _remove_envoy_segments() -> Iterator[None]:
    yield
    for base_id in _ALONE_BASE_IDS:
        segment_path(base_id).unlink(missing_ok=True)


def start_envoy(config: Path, admin_port: int) -> subprocess.Popen[bytes]:
    """Run Envoy alone on a rendered config and wait for its admin /ready (up to 20 s)."""
    envoy = subprocess.Popen(
        [str(BIN / "envoy"), "-c", str(config), "--base-id", str(admin_port),
         "--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _ALONE_BASE_IDS.append(admin_port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return envoy


@dataclass
class RunningSuite:
    """A started suite: its ports, process and log directory."""

    process: subprocess.Popen[str]
    ports: dict[str, int]
    log_dir: Path
    banner: str
    run_dir: Path | None = None

    @property
    def certs(self) -> Path | None:
        """The certificates `sluice up` made (mtls on, none configured), else None."""
        if self.run_dir is None or not (self.run_dir / "certs" / "ca.pem").is_file():
            return None
        return self.run_dir / "certs"

    def channel(self, part: str, identity: str = "operator") -> grpc.aio.Channel:
        """A channel to an internal port, as `identity` when the suite runs mutual TLS.

        Tests dial internal ports only through here, so they keep working whether or
        not the suite's internal hops use mutual TLS."""
        address = self.grpc(part)
        tls = self._tls(part, identity)
        if tls is None:
            return grpc.aio.insecure_channel(address)
        return grpc.aio.secure_channel(address, tls.credentials, options=tls.options)

    def sync_channel(self, part: str, identity: str = "operator") -> grpc.Channel:
        """`channel`, for blocking stubs."""
        address = self.grpc(part)
        tls = self._tls(part, identity)
        if tls is None:
            return grpc.insecure_channel(address)
        return grpc.secure_channel(address, tls.credentials, options=tls.options)

    def grpcurl_tls(self, part: str, identity: str = "operator") -> list[str]:
        """grpcurl's transport flags for an internal port: `identity`'s certificate
        under mutual TLS, else `-plaintext`."""
        certs = self.certs
        if certs is None:
            return ["-plaintext"]
        return [
            "-cacert", str(certs / "ca.pem"),
            "-cert", str(certs / f"{identity}.pem"),
            "-key", str(certs / f"{identity}-key.pem"),
            "-servername", part.split("_", 1)[0],
        ]  # fmt: skip

    def _tls(self, part: str, identity: str) -> ClientTls | None:
        certs = self.certs
        if certs is None:
            return None
        files = TlsFiles(certs / "ca.pem", certs / f"{identity}.pem", certs / f"{identity}-key.pem")
        return ClientTls(channel_credentials(files), part.split("_", 1)[0])

    @property
    def edge(self) -> str:
        return f"http://127.0.0.1:{self.ports['envoy']}"

    def grpc(self, part: str) -> str:
        return f"127.0.0.1:{self.ports[part]}"

    def metrics_url(self, part: str) -> str:
        return f"http://127.0.0.1:{self.ports[part + '_metrics']}/metrics"

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def descendants(self) -> list[int]:
        """PIDs of every process below the supervisor (from /proc)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
        found, queue = [], [self.process.pid]
        while queue:
            for child in children.get(queue.pop(), []):
                found.append(child)
                queue.append(child)
        return found


def suite_config(ports: dict[str, int], **overrides: Any) -> dict[str, Any]:
    """A suite config on the given ports; the simulated model paces 20 tokens/s."""
    config: dict[str, Any] = {
        "tracing": {
            "endpoint": f"127.0.0.1:{ports['telemetry']}",
            "export_delay_ms": 100,
            "sample_ratio": 1.0,  # every trace, so tests can read any of them
        },
        "router": {
            "server": {"port": ports["router"], "metrics_port": ports["router_metrics"]},
            "http_api": {"port": ports["router_http"]},
            "limiter_address": f"127.0.0.1:{ports['limiter']}",
            "provider_address": f"127.0.0.1:{ports['provider']}",
            "progress_interval_ms": 200,
            # The tests use the public development key, accepted only in dev mode.
            "dev_mode": True,
        },
        "limiter": {"server": {"port": ports["limiter"], "metrics_port": ports["limiter_metrics"]}},
        "provider": {
            "server": {"port": ports["provider"], "metrics_port": ports["provider_metrics"]},
            "backends": {
                "simulated": {
                    "time_to_first_token_ms": 50,
                    "tokens_per_second": 20,
                    "answer_tokens": 24,
                }
            },
        },
        "telemetry": {
            "server": {"port": ports["telemetry"], "metrics_port": ports["telemetry_metrics"]},
            "sampling": {"keep_ratio": 1.0, "decision_wait_s": 0.2},
        },
        "envoy": {
            "port": ports["envoy"],
            "admin_port": ports["envoy_admin"],
            "health_check_interval_ms": 500,
            "drain_time_s": 1,
            # Off by default (cost); on here so the suite tests the whole edge path.
            "rate_limit": {"enabled": True},
        },
        "supervisor": {"metrics_port": ports["supervisor_metrics"]},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return config


PORT_NAMES = (
    "router",
    "router_metrics",
    "router_http",
    "limiter",
    "limiter_metrics",
    "provider",
    "provider_metrics",
    "telemetry",
    "telemetry_metrics",
    "envoy",
    "envoy_admin",
    "supervisor_metrics",
)


@contextlib.contextmanager
def start_suite(
    tmp: Path, *, startup_timeout_s: float = 150.0, **overrides: Any
) -> Iterator[RunningSuite]:
    """Start `sluice up` with its own ports and logs; stop it (and check) on exit."""
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    config_file = tmp / "sluice.yaml"
    config_file.write_text(yaml.safe_dump(suite_config(ports, **overrides)))
    log_dir = tmp / "logs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    process = subprocess.Popen(
        [
            str(BIN / "sluice"),
            "up",
            "--config",
            str(config_file),
            "--log-dir",
            str(log_dir),
            "--run-dir",
            str(tmp / "run"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    banner: list[str] = []
    suite = RunningSuite(process, ports, log_dir, "", tmp / "run")
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + startup_timeout_s
        # Once the banner has begun it is read to its end, however late (a loaded machine
        # may pass the deadline between its first line and its last).
        begun = False
        while time.monotonic() < deadline or (begun and not banner[-1].startswith("Ctrl-C")):
            line = process.stdout.readline()
            if not line:
                raise AssertionError(f"sluice up exited early:\n{''.join(banner)}\n{suite.logs()}")
            banner.append(line)
            begun = begun or line.startswith("Sluice is up")
            if line.startswith("Ctrl-C stops everything"):
                break
        else:  # never hand a test a half-read banner
            raise AssertionError(f"sluice up not up in 150 s:\n{''.join(banner)}\n{suite.logs()}")
        suite.banner = "".join(banner)
        yield suite
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                for pid in suite.descendants():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    """One suite shared by the read-only end-to-end tests."""
    with start_suite(tmp_path_factory.mktemp("suite")) as running:
        yield running
