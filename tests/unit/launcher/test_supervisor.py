"""The supervisor restarts dead provider replicas with backoff; other parts stop the suite."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sluice.launcher.settings import load_suite
from sluice.launcher.supervisor import Part, Suite
from sluice.provider.settings import ReplicaPorts


class FakeProcess:
    """Stands in for subprocess.Popen: alive until told it died."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.pid = 4242

    def poll(self) -> int | None:
        return self.returncode


def suite_with(tmp_path: Path, replicas: int = 2) -> tuple[Suite, list[str]]:
    settings = load_suite(None)
    provider = settings.provider.model_copy(update={"replicas": replicas})
    suite = Suite(dataclasses.replace(settings, provider=provider), run_dir=tmp_path)
    spawned: list[str] = []

    def fake_spawn(part: Part) -> None:
        spawned.append(part.name)
        part.process = FakeProcess()  # type: ignore[assignment]
        if part not in suite.parts:
            suite.parts.append(part)

    suite._spawn = fake_spawn  # type: ignore[method-assign]
    return suite, spawned


def part(name: str, *, restart: bool, started_at: float = 0.0) -> Part:
    made = Part(name, ["x"], 1.0, role="provider" if restart else name, restart=restart)
    made.process = FakeProcess()  # type: ignore[assignment]
    made.started_at = started_at
    return made


def kill(target: Part, code: int = -9) -> None:
    process: Any = target.process
    process.returncode = code


def test_a_dead_replica_is_restarted_after_a_growing_backoff(tmp_path: Path) -> None:
    suite, spawned = suite_with(tmp_path)
    replica = part("provider-2", restart=True)
    suite.parts.append(replica)
    assert suite.supervise(now=50.0) is None
    kill(replica)
    assert suite.supervise(now=100.0) is None  # lived 100 s: shortest backoff
    assert replica.restart_at == 100.25
    assert suite.supervise(now=100.2) is None
    assert spawned == []
    assert suite.supervise(now=100.25) is None
    assert spawned == ["provider-2"]
    assert replica.restarts == 1
    # Dying again at once doubles the wait each time, up to 8 s.
    delays = []
    now = 100.25
    for _ in range(7):
        replica.started_at = now
        kill(replica)
        now += 0.5
        suite.supervise(now=now)
        assert replica.restart_at is not None
        delays.append(replica.restart_at - now)
        now = replica.restart_at
        suite.supervise(now=now)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert replica.restarts == 8


def test_any_other_part_dying_stops_the_suite(tmp_path: Path) -> None:
    suite, spawned = suite_with(tmp_path)
    limiter = part("limiter", restart=False)
    suite.parts.append(limiter)
    assert suite.supervise(now=1.0) is None
    kill(limiter, 1)
    assert suite.supervise(now=2.0) is limiter
    assert spawned == []


def test_replica_listeners_use_explicit_ports_then_an_offset(tmp_path: Path) -> None:
    settings = load_suite(None)
    provider = settings.provider.model_copy(
        update={
            "replicas": 3,
            "replica_ports": [ReplicaPorts(port=7001, metrics_port=7002)],
        }
    )
    suite = Suite(dataclasses.replace(settings, provider=provider), run_dir=tmp_path)
    assert suite.provider_listeners() == [(50053, 9103), (7001, 7002), (50253, 9303)]
