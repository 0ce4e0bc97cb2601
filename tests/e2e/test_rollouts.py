"""Rollouts on the real suite and Envoy under steady mixed load (SSE, native gRPC and
OpenAI-compatible streams through the edge): rolling, blue-green and canary each finish
with no failed request and no truncated stream; a candidate whose model fails 5 % of
attempts is rolled back during the canary's first step. Every decision reaches the
webhook (Alertmanager's format), the supervisor's /metrics and `sluice rollout status`.
Each test prints p99 during the rollout beside the steady state before it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtest.soak import KINDS, Run, pct, worker
from tests.e2e.conftest import BIN, RunningSuite, start_suite

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = 9
"""Streams in flight: about 50 requests/s with the fast model below on 2 cores."""
STEADY_S = 2.5
FAST_MODEL = {"time_to_first_token_ms": 20, "tokens_per_second": 200, "answer_tokens": 12}


class Webhook(ThreadingHTTPServer):
    """A local receiver keeping every JSON body POSTed to it."""

    daemon_threads = True

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805 - the handler, inside the server
                length = int(handler.headers["content-length"])
                self.bodies.append(json.loads(handler.rfile.read(length)))
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args: object) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def decisions(self) -> list[tuple[str, str]]:
        return [
            (alert["labels"]["decision"], alert["labels"].get("reason", ""))
            for body in self.bodies
            for alert in body["alerts"]
        ]


@pytest.fixture(scope="module")
def rollout_suite(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningSuite, Webhook]]:
    hook = Webhook()
    tmp = tmp_path_factory.mktemp("rollouts")
    try:
        with start_suite(
            tmp,
            router={"resilience": {"local_limit_rps": 5000}, "progress_interval_ms": 1000},
            limiter={"per_key": {"capacity": 100_000, "refill_per_second": 100_000}},
            provider={"backends": {"simulated": FAST_MODEL}},
            envoy={"rate_limit": {"enabled": False}},
            tracing={"sample_ratio": 0.05},
            rollout={
                "analysis_window_s": 2,
                "analysis_interval_s": 0.5,
                "min_requests": 5,
                "rollback_window_s": 2,
                "drain_timeout_s": 10,
                "ready_timeout_s": 60,
                "webhook_url": f"http://127.0.0.1:{hook.server_port}/hook",
            },
        ) as suite:
            # Keep reading `sluice up`'s log (tests look for lines in it).
            threading.Thread(target=_read_log, args=(suite,), daemon=True).start()
            yield suite, hook
    finally:
        hook.shutdown()
        hook.server_close()


SUPERVISOR_LOG: list[str] = []


def _read_log(suite: RunningSuite) -> None:
    assert suite.process.stdout is not None
    # The file is closed under us when the suite stops.
    with contextlib.suppress(ValueError, OSError):
        for line in suite.process.stdout:
            SUPERVISOR_LOG.append(line)


def candidate_file(suite: RunningSuite, name: str, **changes: Any) -> Path:
    """The suite's own YAML with some sections changed: a new configuration to roll out."""
    assert suite.run_dir is not None
    config = yaml.safe_load((suite.run_dir.parent / "sluice.yaml").read_text())
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    path = suite.run_dir.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sluice_rollout(suite: RunningSuite, *args: str) -> subprocess.CompletedProcess[str]:
    assert suite.run_dir is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return subprocess.run(
        [str(BIN / "sluice"), "rollout", *args, "--run-dir", str(suite.run_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=200,
        env=env,
        check=False,
    )


async def under_load(
    suite: RunningSuite, *args: str
) -> tuple[subprocess.CompletedProcess[str], Run, float, float]:
    """Run `sluice rollout ARGS --wait` while the mixed load runs; returns the command's
    result, the load's results and the rollout's start and end (monotonic)."""
    run = Run(origin=time.monotonic())
    tasks = [
        asyncio.create_task(worker(run, KINDS[i % len(KINDS)], suite.edge, i, CONCURRENCY))
        for i in range(CONCURRENCY)
    ]
    try:
        await asyncio.sleep(STEADY_S)
        began = time.monotonic()
        result = await asyncio.to_thread(sluice_rollout, suite, *args, "--wait")
        ended = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        run.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    return result, run, began, ended


def report(name: str, run: Run, began: float, ended: float) -> dict[str, Any]:
    # Steady state: before the rollout, past the load's first second (new connections).
    steady = [
        r for r in run.results if run.origin + 1 < r.started and r.started + r.seconds < began
    ]
    during = [r for r in run.results if began <= r.started < ended]
    failed = [r for r in run.results if not r.ok]
    figures = {
        "rollout": name,
        "rollout_s": round(ended - began, 1),
        "requests": len(run.results),
        "requests_per_s": round(len(run.results) / (time.monotonic() - run.origin), 1),
        "failed": len(failed),
        "errors": sorted({f"{r.kind}:{r.error}" for r in failed}),
        "p99_ms_steady": pct([r.seconds for r in steady if r.ok], 99),
        "p99_ms_during": pct([r.seconds for r in during if r.ok], 99),
    }
    print(json.dumps(figures))
    return figures


def edge_pools(suite: RunningSuite) -> set[str]:
    """The pools serving unpinned traffic, as Envoy's endpoints file says."""
    assert suite.run_dir is not None
    data = json.loads((suite.run_dir / "xds" / "router.eds.json").read_text())
    endpoints = data["resources"][0]["endpoints"][0]["lb_endpoints"]
    return {
        e["metadata"]["filter_metadata"]["envoy.lb"]["pool"]
        for e in endpoints
        if e["metadata"]["filter_metadata"]["envoy.lb"]["live"] == "true"
    }


def _metrics_url(suite: RunningSuite) -> str:
    return f"http://127.0.0.1:{suite.ports['supervisor_metrics']}/metrics"


async def test_rolling_rollout_fails_nothing(rollout_suite: tuple[RunningSuite, Webhook]) -> None:
    suite, hook = rollout_suite
    candidate = candidate_file(suite, "v2-rolling", router={"progress_interval_ms": 900})
    result, run, began, ended = await under_load(suite, "rolling", "--candidate", str(candidate))
    figures = report("rolling", run, began, ended)
    status = json.loads(result.stdout)
    assert result.returncode == 0, (status["reason"], status["decisions"][-1], result.stderr)
    assert status["state"] == "completed"
    assert figures["failed"] == 0, figures
    assert status["stable_pool"] == "green" and edge_pools(suite) == {"green"}
    assert [p["name"] for p in status["pools"]] == ["green"]
    assert ("completed", "") in hook.decisions()


def test_envoy_hot_restart_after_a_rollout_keeps_the_new_pool(
    rollout_suite: tuple[RunningSuite, Webhook],
) -> None:
    suite, _ = rollout_suite
    assert suite.run_dir is not None
    pid_file = suite.run_dir / "envoy.pid"
    before = pid_file.read_text()
    stable = json.loads(sluice_rollout(suite, "status").stdout)["stable_pool"]
    os.kill(suite.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while pid_file.read_text() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid_file.read_text() != before, "no hot restart"
    # The new Envoy takes over (the supervisor waits for the same) and reads the
    # endpoints file as the rollout left it.
    admin = f"http://127.0.0.1:{suite.ports['envoy_admin']}"
    info = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            info = httpx.get(f"{admin}/server_info", timeout=5).text
            if '"restart_epoch": 1' in info and '"hot_restart_initializing": true' not in info:
                break
        time.sleep(0.2)
    assert '"restart_epoch": 1' in info, info[-300:]
    # The supervisor saw the new Envoy ready: a healthy router replica, though none is
    # on the configured port any more.
    while not any("Envoy hot-restarted" in line for line in SUPERVISOR_LOG):
        assert time.monotonic() < deadline, "".join(SUPERVISOR_LOG[-20:])
        time.sleep(0.2)
    assert edge_pools(suite) == {stable}
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    auth = {"authorization": "Bearer sk-sluice-dev"}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.post(f"{suite.edge}/v1/generate", json=body, headers=auth, timeout=10)
            if response.status_code == 200 and '"complete"' in response.text:
                break
        time.sleep(0.2)
    else:
        raise AssertionError("the edge does not serve after the hot restart")
    clusters = httpx.get(f"{admin}/clusters", timeout=5).text
    assert "::health_flags::healthy" in clusters


async def test_blue_green_switch_fails_nothing(rollout_suite: tuple[RunningSuite, Webhook]) -> None:
    suite, hook = rollout_suite
    stable = json.loads(sluice_rollout(suite, "status").stdout)["stable_pool"]
    candidate = candidate_file(suite, "v3-blue-green", router={"progress_interval_ms": 800})
    result, run, began, ended = await under_load(suite, "blue-green", "--candidate", str(candidate))
    figures = report("blue-green", run, began, ended)
    status = json.loads(result.stdout)
    assert result.returncode == 0, (status["reason"], status["decisions"][-1], result.stderr)
    assert status["state"] == "promoted"
    assert figures["failed"] == 0, figures
    assert status["stable_pool"] != stable and edge_pools(suite) == {status["stable_pool"]}
    assert ("promoted", "") in hook.decisions()


async def test_canary_promotion_fails_nothing(rollout_suite: tuple[RunningSuite, Webhook]) -> None:
    suite, _ = rollout_suite
    steps_before = supervisor_metric_total(suite, "sluice_rollout_steps_total")
    candidate = candidate_file(suite, "v4-canary", router={"progress_interval_ms": 700})
    result, run, began, ended = await under_load(suite, "canary", "--candidate", str(candidate))
    figures = report("canary", run, began, ended)
    status = json.loads(result.stdout)
    assert result.returncode == 0, (status["reason"], status["decisions"][-1], result.stderr)
    assert status["state"] == "promoted"
    assert figures["failed"] == 0, figures
    steps = [
        d for d in status["decisions"] if d["decision"] == "step" and d["version"] == "v4-canary"
    ]
    assert [d["weight_percent"] for d in steps] == [5, 25, 50, 100]
    assert all(g["passed"] for g in status["gates"])
    assert supervisor_metric_total(suite, "sluice_rollout_steps_total") == steps_before + 4
    assert edge_pools(suite) == {status["stable_pool"]}


async def test_bad_canary_is_rolled_back_in_its_first_step(
    rollout_suite: tuple[RunningSuite, Webhook],
) -> None:
    suite, hook = rollout_suite
    stable = json.loads(sluice_rollout(suite, "status").stdout)["stable_pool"]
    faulty = {"simulated": {**FAST_MODEL, "faults": {"error_rate": 0.05}}}
    candidate = candidate_file(suite, "v5-faulty", provider={"backends": faulty})
    # A long first step: the rollback must come from the gates, not the window's end.
    result, run, began, ended = await under_load(
        suite, "canary", "--candidate", str(candidate), "--analysis-window", "60"
    )
    figures = report("bad canary", run, began, ended)
    status = json.loads(result.stdout)
    assert result.returncode == 1, (result.stderr, status)
    assert status["state"] == "rolled_back"
    assert status["step"] == 1, status
    assert status["reason"] in ("upstream_error_rate", "error_rate", "success_rate"), status
    assert status["stable_pool"] == stable and edge_pools(suite) == {stable}
    assert [p["name"] for p in status["pools"]] == [stable]
    rolled_back = [d for d in status["decisions"] if d["decision"] == "rolled_back"]
    print(
        json.dumps(
            {
                "bad_canary_failed_requests": figures["failed"],
                "rollout_start_to_rollback_s": status["seconds"],
                "candidate_traffic_to_rollback_s": status["traffic_seconds"],
                "reason": status["reason"],
                "message": rolled_back[-1]["message"],
            }
        )
    )
    # Only the candidate's 5 % share of traffic could fail, and retries hide most of it.
    assert figures["failed"] <= 0.05 * figures["requests"]
    assert ("rolled_back", status["reason"]) in hook.decisions()
    assert (
        supervisor_metric_total(
            suite, "sluice_rollout_rollbacks_total", version="v5-faulty", reason=status["reason"]
        )
        == 1
    )
    webhook = next(
        body for body in hook.bodies if body["alerts"][0]["labels"]["decision"] == "rolled_back"
    )
    assert webhook["version"] == "4" and webhook["status"] == "firing"
    assert webhook["alerts"][0]["labels"]["severity"] == "page"
    # The dashboard's rollout panels query series this supervisor now exposes.
    exposed = supervisor_text(suite)
    board = json.loads((ROOT / "deploy" / "grafana" / "errors.json").read_text())
    queried = {
        name
        for panel in board["panels"]
        for target in panel["targets"]
        for name in re.findall(r"sluice_rollout_\w+", target["expr"])
    }
    assert len(queried) >= 5
    assert [name for name in queried if f"\n{name}" not in exposed] == []


def supervisor_text(suite: RunningSuite) -> str:
    return httpx.get(_metrics_url(suite), timeout=5).text


def supervisor_metric_total(suite: RunningSuite, name: str, **labels: str) -> float:
    text = supervisor_text(suite)
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_abort_switches_back_to_blue_within_the_rollback_window(
    rollout_suite: tuple[RunningSuite, Webhook],
) -> None:
    suite, hook = rollout_suite
    stable = json.loads(sluice_rollout(suite, "status").stdout)["stable_pool"]
    candidate = candidate_file(suite, "v6-aborted", router={"progress_interval_ms": 600})
    started = sluice_rollout(
        suite, "blue-green", "--candidate", str(candidate), "--rollback-window", "120"
    )
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 90
    status = json.loads(started.stdout)
    while "warm" not in (status["phase"] or "") and time.monotonic() < deadline:
        time.sleep(0.5)
        status = json.loads(sluice_rollout(suite, "status").stdout)
    assert status["state"] == "running" and "warm" in status["phase"], status
    assert edge_pools(suite) == {status["candidate_pool"]}
    assert json.loads(sluice_rollout(suite, "abort").stdout)["state"] == "running"
    while status["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        status = json.loads(sluice_rollout(suite, "status").stdout)
    assert status["state"] == "aborted" and status["reason"] == "manual", status
    assert edge_pools(suite) == {stable}
    assert [p["name"] for p in status["pools"]] == [stable]
    assert ("aborted", "manual") in hook.decisions()
    again = sluice_rollout(suite, "abort")
    assert again.returncode == 1 and "NO_ROLLOUT" in again.stderr


def test_control_endpoint_refuses_a_wrong_token(
    rollout_suite: tuple[RunningSuite, Webhook],
) -> None:
    suite, _ = rollout_suite
    assert suite.run_dir is not None
    token = suite.run_dir / "rollout.token"
    assert token.stat().st_mode & 0o777 == 0o600
    url = (suite.run_dir / "rollout.url").read_text().strip()
    assert httpx.get(f"{url}/v1/rollout", headers={"authorization": "Bearer x"}).status_code == 401
    good = {"authorization": f"Bearer {token.read_text().strip()}"}
    bad = httpx.post(f"{url}/v1/rollout", headers=good, json={"strategy": "canary"})
    assert bad.status_code == 400 and bad.json()["error"]["reason"] == "INVALID_ARGUMENT"
    missing = httpx.post(
        f"{url}/v1/rollout", headers=good, json={"strategy": "canary", "candidate": "/nonexistent"}
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["reason"] == "INVALID_CANDIDATE"
    steps = httpx.post(
        f"{url}/v1/rollout",
        headers=good,
        json={"strategy": "canary", "candidate": str(suite.run_dir.parent / "sluice.yaml"),
              "settings": {"steps": [50, 20]}},
    )  # fmt: skip
    assert steps.status_code == 400 and "steps" in steps.json()["error"]["message"]
