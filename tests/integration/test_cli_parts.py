"""`sluice serve PART`, `sluice envoy` and `sluice --version`: what each container of the
image runs, as real processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtest.chaos import free_ports
from sluice.core.config import CONFIG_ENV
from sluice.core.grpcx.certs import write_suite_certs
from sluice.core.grpcx.tls import ClientTls, TlsFiles, channel_credentials
from sluice.launcher.cli import main
from sluice.launcher.version import REVISION_ENV, git_revision, version_text

SLUICE = str(Path(sys.executable).parent / "sluice")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's certificates: mutual TLS is the default, so every part needs them."""
    directory = tmp_path_factory.mktemp("certs")
    write_suite_certs(directory)
    return directory


def _serving(port: int, service: str, certs: Path, server: str) -> bool:
    files = TlsFiles(certs / "ca.pem", certs / "operator.pem", certs / "operator-key.pem")
    tls = ClientTls(channel_credentials(files), server)
    with grpc.secure_channel(f"127.0.0.1:{port}", tls.credentials, options=tls.options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=0.5
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _wait(process: subprocess.Popen[bytes], ready: object, what: str, limit_s: float = 20) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode} before {what}"
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"{what} not reached in {limit_s} s")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_version_names_the_package_and_the_checkouts_revision(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(REVISION_ENV, raising=False)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    code, out, _ = _run_main(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"sluice {metadata.version('sluice-gateway')} (revision {head})"


def test_version_prefers_the_images_build_metadata(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(REVISION_ENV, "0123abcd")
    code, out, _ = _run_main(["--version"], capsys)
    assert (code, out.strip()) == (
        0,
        f"sluice {metadata.version('sluice-gateway')} (revision 0123abcd)",
    )


def test_version_without_git_or_metadata_names_the_version_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(REVISION_ENV, raising=False)
    assert git_revision(tmp_path) is None  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert version_text() == f"sluice {metadata.version('sluice-gateway')}"


def test_serve_runs_one_service_from_the_settings_file_until_sigterm(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], certs: Path
) -> None:
    port, metrics_port = free_ports(2)
    config = tmp_path / "sluice.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "limiter": {
                    "server": {"port": port, "metrics_port": metrics_port, "shutdown_grace_s": 1}
                },
                "security": {"certs_dir": str(certs)},
            }
        )
    )
    process = subprocess.Popen(
        [SLUICE, "serve", "limiter", "--config", str(config)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(process)
    _wait(
        process,
        lambda: _serving(port, "sluice.limiter.v1.LimiterService", certs, "limiter"),
        "SERVING",
    )
    # One process: the service runs in the CLI's own process, so the init's signal lands.
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)
    assert metrics.status_code == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_serve_takes_the_environment_over_the_file(
    processes: list[subprocess.Popen[bytes]], certs: Path
) -> None:
    port, metrics_port = free_ports(2)
    process = subprocess.Popen(
        [SLUICE, "serve", "telemetry"],
        env=_env(
            SLUICE_TELEMETRY_SERVER__PORT=str(port),
            SLUICE_TELEMETRY_SERVER__METRICS_PORT=str(metrics_port),
            SLUICE_TELEMETRY_SERVER__SHUTDOWN_GRACE_S="1",
            SLUICE_TELEMETRY_SECURITY__CERTS_DIR=str(certs),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(process)
    _wait(
        process,
        lambda: _serving(
            port, "opentelemetry.proto.collector.trace.v1.TraceService", certs, "telemetry"
        ),
        "SERVING",
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_serve_with_a_bad_setting_exits_2_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CONFIG_ENV, "")  # restored after the test: serve --config sets it
    config = tmp_path / "sluice.yaml"
    config.write_text(yaml.safe_dump({"router": {"server": {"port": 70000}}}))
    code, _, err = _run_main(["serve", "router", "--config", str(config)], capsys)
    assert code == 2
    assert "router.server.port" in err


def test_serve_without_certificates_exits_2_naming_the_settings(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port, metrics_port = free_ports(2)
    process = subprocess.Popen(
        [SLUICE, "serve", "provider"],
        env=_env(
            SLUICE_PROVIDER_SERVER__PORT=str(port),
            SLUICE_PROVIDER_SERVER__METRICS_PORT=str(metrics_port),
        ),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    processes.append(process)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert b"security.certs_dir" in err and b"security.mtls: false" in err


def test_serve_refuses_an_unknown_part(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_main(["serve", "envoy"], capsys)
    assert code == 2
    assert "invalid choice" in err


def test_envoy_renders_its_bootstrap_and_becomes_envoy(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], certs: Path
) -> None:
    edge, admin, router = free_ports(3)
    config = tmp_path / "sluice.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "router": {"server": {"port": router, "metrics_port": 0}},
                "envoy": {"port": edge, "admin_port": admin, "drain_time_s": 0},
                "security": {"certs_dir": str(certs)},
            }
        )
    )
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [SLUICE, "envoy", "--config", str(config), "--run-dir", str(run_dir)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(process)

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    _wait(process, ready, "/ready")
    rendered = yaml.safe_load((run_dir / "envoy.yaml").read_text())
    assert (
        rendered["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        == edge
    )
    # exec, not a child: the CLI's process is Envoy itself.
    assert Path(f"/proc/{process.pid}/exe").resolve().name == "envoy"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_envoy_with_an_unwritable_run_dir_fails_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _run_main(["envoy", "--run-dir", str(blocker / "run")], capsys)
    assert code == 1
    assert "cannot write to" in err
