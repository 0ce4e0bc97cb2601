"""The pipeline's production stages on a real suite (scripts/production.py, docs/pipeline.md):
the first `deploy` creates production's own API key (owner-only file) and starts
production with `sluice up`, out of dev mode like deploy/sluice.example.yaml, and waits
until it is healthy; `health` then passes, and fails once production is gone; a second
`deploy` rolls out by `sluice rollout canary`, smoke requests and traffic with that key
— or, where this sluice has no rollout command, fails saying so; `down` (make
production-down) stops it. The key is never in a log, an output or an argv.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loadtest.chaos import free_ports
from tests.e2e.conftest import PORT_NAMES, suite_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def production(config: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No PROD_TRAFFIC_KEY: the trickle uses the key production made for itself.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLUICE_") and k != "PROD_TRAFFIC_KEY"
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "production.py"), "--sluice",
         str(BIN / "sluice"), "--config", str(config), "--run-dir", str(run_dir), *args],
        capture_output=True, text=True, timeout=400, env=env, check=False,
    )  # fmt: skip


def stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # The detached `sluice up` is our own child here: reap it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def models_status(edge: str, key: str) -> int:
    request = urllib.request.Request(
        f"{edge}/v1/models", headers={"authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def holders(secret: str, *roots: Path) -> list[str]:
    """Files under `roots`, and processes' command lines, that hold `secret`."""
    found = [
        str(path)
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and secret.encode() in path.read_bytes()
    ]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if secret.encode() in cmdline.read_bytes():
                found.append(str(cmdline))
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def _children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (the parts `sluice up` ran)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


@pytest.fixture
def prod(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    config = tmp_path / "production.yaml"
    # deploy/sluice.example.yaml's shape: the development key listed, dev mode off.
    settings = suite_config(
        ports, router={"dev_mode": False}, audit={"directory": str(tmp_path / "audit")}
    )
    config.write_text(yaml.safe_dump(settings))
    run_dir = tmp_path / "production"
    try:
        yield config, run_dir
    finally:
        pid_file = run_dir.with_suffix(".pid")
        if pid_file.exists():
            stop(int(pid_file.read_text()))


@pytest.mark.timeout(600)
def test_first_deploy_starts_production_then_health_passes_and_a_redeploy_rolls_out(
    prod: tuple[Path, Path],
) -> None:
    config, run_dir = prod
    unhealthy = production(config, run_dir, "health")
    assert unhealthy.returncode == 1 and "Envoy is not ready" in unhealthy.stdout

    started = production(config, run_dir, "deploy", "--label", "first")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "production started (first deploy)" in started.stdout
    assert "created its API key 'production'" in started.stdout
    pid = int(run_dir.with_suffix(".pid").read_text())

    # Production's own key, owner-only, and the generated config that points at it.
    key_file = run_dir / "production.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert key and key != "sk-sluice-dev"
    generated = yaml.safe_load((run_dir / "production.yaml").read_text())
    assert generated["router"]["dev_mode"] is False
    assert generated["rollout"]["smoke_api_key_file"] == str(key_file.absolute())
    assert generated["router"]["keys"]["store_path"].startswith(str(run_dir.absolute()))
    edge = f"http://127.0.0.1:{yaml.safe_load(config.read_text())['envoy']['port']}"
    assert models_status(edge, key) == 200
    assert models_status(edge, "sk-sluice-dev") == 401  # out of dev mode
    assert key not in started.stdout + started.stderr

    healthy = production(config, run_dir, "health")
    assert healthy.returncode == 0, healthy.stdout
    assert "production healthy" in healthy.stdout

    redeploy = production(
        config, run_dir, "deploy", "--label", "second", "--steps", "50,100",
        "--analysis-window", "3", "--traffic-rps", "10",
    )  # fmt: skip
    has_rollout = subprocess.run(
        [str(BIN / "sluice"), "rollout", "--help"], capture_output=True, check=False
    )
    if has_rollout.returncode != 0:
        assert redeploy.returncode == 3
        assert "has no `rollout` command" in redeploy.stderr
    else:
        out = redeploy.stdout + redeploy.stderr
        # The candidate reads the generated config, so its routers accept the same key.
        assert f"--candidate {run_dir / 'production.yaml'}" in redeploy.stdout, out
        assert re.search(r"^state\s+promoted$", redeploy.stdout, re.MULTILINE), out
        assert redeploy.returncode == 0, out
        traffic = re.search(r"traffic during the rollout: (\d+) answered, (\d+) failed", out)
        assert traffic is not None, out
        assert int(traffic[1]) > 0 and int(traffic[2]) == 0, traffic[0]
        assert "stopped early" not in out
    assert production(config, run_dir, "health").returncode == 0
    assert models_status(edge, key) == 200  # the promoted routers read the same store
    assert key not in redeploy.stdout + redeploy.stderr
    assert holders(key, run_dir, config.parent / "audit") == [str(key_file)]
    # Still the one production started first: a redeploy never starts a second suite.
    assert int(run_dir.with_suffix(".pid").read_text()) == pid

    # `down` (make production-down) stops it: the leader and every part it ran.
    parts = _children_of(pid)
    assert parts, "sluice up runs its parts as its children"
    stopped = production(config, run_dir, "down")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"production (pid {pid}) stopped" in stopped.stdout
    assert not run_dir.with_suffix(".pid").exists()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)
    assert all(_state(part) in {"gone", "Z"} for part in parts), [_state(p) for p in parts]
    gone = production(config, run_dir, "health")
    assert gone.returncode == 1 and "Envoy is not ready" in gone.stdout
    again = production(config, run_dir, "down")
    assert again.returncode == 0 and "not running" in again.stdout
