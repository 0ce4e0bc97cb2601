"""The pipeline's production stages on a real suite (scripts/production.py, docs/pipeline.md):
the first `deploy` starts production with `sluice up` and waits until it is healthy;
`health` then passes, and fails once production is gone; a second `deploy` rolls out by
`sluice rollout canary` — or, where this sluice has no rollout command, fails saying so;
`down` (make production-down) stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["PROD_TRAFFIC_KEY"] = "sk-sluice-dev"  # the default configuration's development key
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
    config.write_text(yaml.safe_dump(suite_config(ports)))
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
    pid = int(run_dir.with_suffix(".pid").read_text())

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
        # Promoted or rolled back by its gates: either way production stays healthy.
        assert "sluice rollout canary" in redeploy.stdout, redeploy.stdout + redeploy.stderr
        assert "traffic during the rollout" in redeploy.stdout
    assert production(config, run_dir, "health").returncode == 0
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
