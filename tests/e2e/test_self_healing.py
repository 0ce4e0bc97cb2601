"""A running suite heals itself: kill -9 of any part brings it back SERVING, and a part
that cannot come back is given up on (reported) while the rest keeps serving."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import DEV_KEY, RunningSuite, start_suite

pytestmark = pytest.mark.e2e

HEALTH = {
    "router": "sluice.router.v1.RouterService",
    "limiter": "sluice.limiter.v1.LimiterService",
    "provider": "sluice.provider.v1.ProviderService",
    "telemetry": "opentelemetry.proto.collector.trace.v1.TraceService",
}
BODY = {"model": "default", "messages": [{"role": "user", "content": "heal"}], "max_tokens": 3}


def serving(suite: RunningSuite, part: str, service: str) -> bool:
    with suite.sync_channel(part) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=0.3
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def pid_of(run_dir: Path, part: str) -> int:
    return int((run_dir / f"{part}.pid").read_text())


def complete_through_envoy(suite: RunningSuite, timeout_s: float = 15.0) -> float:
    """Seconds until a unary completion through Envoy succeeds."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout_s:
        try:
            response = httpx.post(
                f"{suite.edge}/v1/complete",
                json=BODY,
                headers={"authorization": f"Bearer {DEV_KEY}"},
                timeout=5,
            )
            if response.status_code == 200 and response.json().get("text"):
                return time.monotonic() - start
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as err:
            last = repr(err)
        time.sleep(0.05)
    raise AssertionError(f"no completion through Envoy within {timeout_s} s: {last}")


def supervisor_metric(suite: RunningSuite, name: str, part: str) -> float:
    text = httpx.get(suite.metrics_url("supervisor"), timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{part="{part}"'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} of {part} missing:\n{text}")


def test_kill_9_of_each_part_comes_back_serving(tmp_path: Path) -> None:
    with start_suite(tmp_path) as suite:
        run_dir = tmp_path / "run"
        complete_through_envoy(suite)
        recovered: dict[str, float] = {}
        for part in ("limiter", "provider", "telemetry", "router"):
            victim = pid_of(run_dir, part)
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            deadline = killed + 20
            while time.monotonic() < deadline:
                if pid_of(run_dir, part) != victim and serving(suite, part, HEALTH[part]):
                    break
                time.sleep(0.02)
            else:
                raise AssertionError(f"{part} not SERVING again in 20 s\n{suite.logs()}")
            recovered[part] = time.monotonic() - killed
            # The whole path works again (Envoy re-checks a restarted router's health).
            complete_through_envoy(suite)
            assert supervisor_metric(suite, "sluice_launcher_part_restarts_total", part) == 1
        victim = pid_of(run_dir, "envoy")
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        complete_through_envoy(suite, timeout_s=20)
        recovered["envoy"] = time.monotonic() - killed
        assert pid_of(run_dir, "envoy") != victim
        assert suite.process.poll() is None, suite.logs()
        print("seconds from kill -9 to SERVING:", {k: round(v, 2) for k, v in recovered.items()})


def test_a_part_that_keeps_failing_is_given_up_and_the_rest_keeps_serving(
    tmp_path: Path,
) -> None:
    supervisor = {"max_restarts": 2, "backoff_initial_s": 0.1, "backoff_max_s": 0.2}
    with start_suite(tmp_path, supervisor=supervisor) as suite:
        run_dir = tmp_path / "run"
        victim = pid_of(run_dir, "telemetry")
        # Hold telemetry's port so every restart fails to bind, as when another process
        # took it while the part was down.
        with socket.socket() as holder:
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while True:
                try:
                    holder.bind(("127.0.0.1", suite.ports["telemetry"]))
                    break
                except OSError:
                    assert time.monotonic() < deadline, "telemetry's port was not released"
                    time.sleep(0.01)
            holder.listen()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if supervisor_metric(suite, "sluice_launcher_part_crash_looping", "telemetry"):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"telemetry never declared crash-looping\n{suite.logs()}")
            restarts = supervisor_metric(suite, "sluice_launcher_part_restarts_total", "telemetry")
            assert restarts == 2
            time.sleep(1.0)  # no further restart after giving up
            assert (
                supervisor_metric(suite, "sluice_launcher_part_restarts_total", "telemetry")
                == restarts
            )
            assert supervisor_metric(suite, "sluice_launcher_part_up", "telemetry") == 0
            # Everything else keeps serving.
            for part in ("router", "limiter", "provider"):
                assert serving(suite, part, HEALTH[part]), part
            complete_through_envoy(suite, timeout_s=5)
            assert suite.process.poll() is None
        suite.process.send_signal(signal.SIGTERM)
        output, _ = suite.process.communicate(timeout=40)
        assert "telemetry is crash-looping" in output
        assert f"grpc 127.0.0.1:{suite.ports['telemetry']}" in output
