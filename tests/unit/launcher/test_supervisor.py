"""The supervisor restarts every part that dies, with backoff, and gives up on a part
that crash-loops (reported, left stopped) without stopping the others."""

from __future__ import annotations

import dataclasses
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from sluice.core.config import SecuritySettings
from sluice.launcher.hot_restart import EnvoyIdentity, segment_path
from sluice.launcher.parts import Part, StartupError
from sluice.launcher.restarts import RestartPolicy
from sluice.launcher.settings import SupervisorSettings, load_suite
from sluice.launcher.supervisor import Suite, mtls_line
from sluice.provider.settings import ReplicaPorts


class FakeProcess:
    """Stands in for subprocess.Popen: alive until told it died."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.pid = 4242

    def poll(self) -> int | None:
        return self.returncode


def suite_with(tmp_path: Path, replicas: int = 2, **supervisor: Any) -> tuple[Suite, list[str]]:
    settings = load_suite(None)
    provider = settings.provider.model_copy(update={"replicas": replicas})
    settings = dataclasses.replace(
        settings, provider=provider, supervisor=SupervisorSettings(**supervisor)
    )
    suite = Suite(settings, run_dir=tmp_path)
    spawned: list[str] = []

    def fake_spawn(part: Part) -> None:
        spawned.append(part.name)
        part.process = FakeProcess()  # type: ignore[assignment]
        if part not in suite.parts:
            suite.parts.append(part)

    suite._spawn = fake_spawn  # type: ignore[method-assign]
    return suite, spawned


def part(suite: Suite, name: str, started_at: float = 0.0) -> Part:
    made = suite._add(Part(name, ["x"], 1.0, role="provider" if "provider" in name else name))
    made.process = FakeProcess()  # type: ignore[assignment]
    made.started_at = started_at
    suite.parts.append(made)
    return made


def kill(target: Part, code: int = -9) -> None:
    process: Any = target.process
    process.returncode = code


def sample(suite: Suite, name: str, target: Part) -> float:
    value = suite.metrics.registry.get_sample_value(
        name, {"part": target.name, "role": target.role}
    )
    assert value is not None, name
    return value


def test_a_dead_replica_is_restarted_after_a_growing_backoff(tmp_path: Path) -> None:
    suite, spawned = suite_with(tmp_path, max_restarts=100)
    replica = part(suite, "provider-2")
    suite.supervise(now=50.0)
    kill(replica)
    suite.supervise(now=100.0)  # lived 100 s: shortest backoff
    assert replica.restart_at == 100.25
    suite.supervise(now=100.2)
    assert spawned == []
    suite.supervise(now=100.25)
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
    assert sample(suite, "sluice_launcher_part_restarts_total", replica) == 8


@pytest.mark.parametrize("name", ["router", "limiter", "telemetry", "provider", "envoy"])
def test_every_part_that_dies_is_restarted_and_the_rest_left_alone(
    tmp_path: Path, name: str
) -> None:
    suite, spawned = suite_with(tmp_path)
    if name == "envoy":
        # Not started by this test: the restart falls back to a first start.
        suite._envoy_argv = lambda identity: ["envoy", *identity]  # type: ignore[method-assign]
    victim = part(suite, name)
    bystander = part(suite, "limiter" if name != "limiter" else "router")
    kill(victim)
    suite.supervise(now=100.0)
    assert sample(suite, "sluice_launcher_part_up", victim) == 0
    assert sample(suite, "sluice_launcher_part_exits_total", victim) == 1
    suite.supervise(now=101.0)
    assert spawned == [name]
    assert sample(suite, "sluice_launcher_part_up", victim) == 1
    assert bystander.restarts == 0


def test_a_crash_looping_part_is_reported_and_left_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite, spawned = suite_with(
        tmp_path, max_restarts=3, restart_window_s=60.0, backoff_initial_s=0.1, backoff_max_s=0.4
    )
    limiter = part(suite, "limiter")
    router = part(suite, "router")
    now = 10.0
    for _ in range(10):
        limiter.started_at = now
        kill(limiter, 1)
        now += 0.05
        suite.supervise(now=now)
        if limiter.restart_at is None:
            break
        now = limiter.restart_at
        suite.supervise(now=now)
    assert limiter.crash_looping
    assert spawned == ["limiter"] * 3
    assert sample(suite, "sluice_launcher_part_crash_looping", limiter) == 1
    assert sample(suite, "sluice_launcher_part_crash_looping", router) == 0
    assert "limiter is crash-looping" in capsys.readouterr().err
    # Left stopped for good, however long the suite runs; the router is untouched.
    suite.supervise(now=now + 1000.0)
    assert spawned == ["limiter"] * 3
    assert router.process is not None and router.process.poll() is None


def test_restarts_older_than_the_window_do_not_count() -> None:
    settings = SupervisorSettings(max_restarts=2, restart_window_s=10.0, stable_s=100.0)
    policy = RestartPolicy(settings)
    for now in (0.0, 1.0):
        assert policy.on_exit(now, 0.1) is not None
        policy.restarted(now)
    assert policy.on_exit(5.0, 0.1) is None  # third restart within 10 s: crash-looping
    fresh = RestartPolicy(settings)
    for now in (0.0, 1.0, 20.0, 21.0, 40.0):
        assert fresh.on_exit(now, 0.1) is not None
        fresh.restarted(now)
    assert not fresh.crash_looping


def test_settings_reject_a_max_below_the_initial_backoff() -> None:
    with pytest.raises(ValueError, match="backoff_max_s"):
        SupervisorSettings(backoff_initial_s=5.0, backoff_max_s=1.0)


def test_a_part_that_cannot_bind_is_retried_then_named_with_its_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = dataclasses.replace(
        load_suite(None),
        supervisor=SupervisorSettings(max_restarts=2, backoff_initial_s=0.01, backoff_max_s=0.02),
    )
    suite = Suite(settings, run_dir=tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        binder = f"import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', {port})); sys.exit(0)"
        blocked = Part(
            "router",
            [sys.executable, "-c", binder],
            1.0,
            ready=lambda: False,
            ports=[("grpc", "127.0.0.1", port)],
        )
        with pytest.raises(StartupError, match=rf"router \(grpc 127.0.0.1:{port} \(in use\)\)"):
            suite._launch(blocked, "SERVING")
    err = capsys.readouterr().err
    assert err.count(f"grpc 127.0.0.1:{port} (in use)") == 2  # two retries, then giving up
    assert "retrying in" in err
    assert blocked.restarts == 2
    suite.stop()


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


def test_envoy_identity_picks_a_base_id_once_and_reuses_it(tmp_path: Path) -> None:
    identity = EnvoyIdentity(tmp_path / "run")
    (tmp_path / "run").mkdir()
    identity.base_id_path.write_text("77")  # a stale file from an earlier run
    first = identity.first_start()
    assert first[:3] == ["--use-dynamic-base-id", "--base-id-path", str(identity.base_id_path)]
    assert identity.base_id() is None  # the stale id is not reused
    identity.base_id_path.write_text("123456")  # as Envoy writes it
    assert identity.restart(parent_alive=True) == ["--base-id", "123456", "--restart-epoch", "1"]
    assert identity.restart(parent_alive=True)[-1] == "2"
    # A dead parent cannot hand over: epoch 0 on the same base id.
    assert identity.restart(parent_alive=False) == ["--base-id", "123456", "--restart-epoch", "0"]
    assert segment_path(123456).name == "envoy_shared_memory_1234560"


def test_the_banner_says_where_the_operator_certificate_is_or_that_mtls_is_off() -> None:
    on = mtls_line(SecuritySettings(certs_dir=Path("/run/certs")))
    assert "mutual TLS    on" in on and "/run/certs/operator.pem" in on
    off = mtls_line(SecuritySettings(mtls=False))
    assert "OFF (security.mtls: false)" in off and "any local process" in off
