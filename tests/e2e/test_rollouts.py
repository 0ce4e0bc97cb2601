"""Rollouts on the real suite (two router replicas) and Envoy under steady mixed load
(SSE, native gRPC and OpenAI-compatible streams through the edge): rolling, blue-green
and canary each finish with no failed request and no truncated stream; a rolling rollout
whose second candidate fails its smoke request restarts the replaced replica on the
baseline; a candidate whose model fails 5 % of attempts is rolled back during the
canary's first step, and one that stops answering health checks too; a canary without
auto-promotion holds until `sluice rollout promote`. Every decision reaches the webhook
(Alertmanager's format), the supervisor's /metrics and `sluice rollout status`. Each test
prints p99 during the rollout beside the steady state before it.

One suite serves every test (each leaves one stable pool of two replicas behind): its
start and each router's start are the cost, so `sluice rollout` runs in this process
(`main()`, as the executable would) and status is polled from the control endpoint
rather than through a new interpreter per look."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from loadtest.soak import KINDS, Run, pct, worker
from sluice.launcher.cli import main as sluice_main
from tests.e2e.conftest import BIN, RunningSuite, free_ports, start_suite

pytestmark = pytest.mark.timeout(240)
T = TypeVar("T")

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
    grpc_port, metrics_port, http_port = free_ports(3)
    second = {"port": grpc_port, "metrics_port": metrics_port, "http_port": http_port}
    try:
        with start_suite(
            tmp,
            supervisor={"replicas": {"router": 2}, "replica_ports": {"router": [second]}},
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
    """`sluice rollout ARGS` as its own process (the installed executable)."""
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


_CLI_LOCK = threading.Lock()
"""The CLI prints to sys.stdout, swapped for one call at a time."""


def sluice_cli(suite: RunningSuite, *args: str) -> subprocess.CompletedProcess[str]:
    """`sluice rollout ARGS --json` through the CLI's `main()` in this process: the same
    parsing, control calls, `--wait` loop and exit code as the executable, without a
    new interpreter's imports (seconds each on a loaded machine)."""
    assert suite.run_dir is not None
    argv = ["rollout", *args, "--run-dir", str(suite.run_dir), "--json"]
    out, err = io.StringIO(), io.StringIO()
    with _CLI_LOCK, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = sluice_main(argv)
        except SystemExit as exited:  # argparse's errors
            code = exited.code if isinstance(exited.code, int) else 2
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def control(
    suite: RunningSuite, method: str = "GET", path: str = "/v1/rollout", body: Any = None
) -> dict[str, Any]:
    """One call to the suite's rollout control endpoint (what `sluice rollout` calls)."""
    assert suite.run_dir is not None
    url = (suite.run_dir / "rollout.url").read_text().strip()
    token = (suite.run_dir / "rollout.token").read_text().strip()
    response = httpx.request(
        method, url + path, json=body, headers={"authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code in (200, 202), response.text
    result: dict[str, Any] = response.json()
    return result


def wait_for(
    suite: RunningSuite, done: Callable[[dict[str, Any]], bool], seconds: float, what: str
) -> dict[str, Any]:
    """Poll the rollout's status until `done` holds."""
    deadline = time.monotonic() + seconds
    status = control(suite)
    while not done(status):
        assert time.monotonic() < deadline, f"{what}: {json.dumps(status)[:2000]}"
        time.sleep(0.1)
        status = control(suite)
    return status


def phase(status: dict[str, Any]) -> str:
    return str(status["phase"] or "")


async def with_load(suite: RunningSuite, action: Callable[[], T]) -> tuple[T, Run, float, float]:
    """Run `action` (in a thread) while the mixed load runs; returns its result, the
    load's results and the action's start and end (monotonic)."""
    run = Run(origin=time.monotonic())
    tasks = [
        asyncio.create_task(worker(run, KINDS[i % len(KINDS)], suite.edge, i, CONCURRENCY))
        for i in range(CONCURRENCY)
    ]
    try:
        await asyncio.sleep(STEADY_S)
        began = time.monotonic()
        result = await asyncio.to_thread(action)
        ended = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        run.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    return result, run, began, ended


async def under_load(
    suite: RunningSuite, *args: str
) -> tuple[subprocess.CompletedProcess[str], Run, float, float]:
    """Run `sluice rollout ARGS --wait` while the mixed load runs; returns the command's
    result, the load's results and the rollout's start and end (monotonic)."""
    return await with_load(suite, lambda: sluice_cli(suite, *args, "--wait"))


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


CANDIDATE_CEILING = 6000
"""The candidates' admission ceiling (router.admission.adaptive.max_limit): a
configuration's mark in each router's /metrics (the suite's is the memory budget's)."""


def ceiling(metrics_url: str) -> float | None:
    """The replica's sluice_router_concurrency_ceiling, once it has served a request."""
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(metrics_url, timeout=2).text.splitlines():
            if line.startswith("sluice_router_concurrency_ceiling{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text()


def ceilings_once_used(suite: RunningSuite, urls: list[str]) -> list[float | None]:
    """Each replica's ceiling, after requests through the edge reached every one."""
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    auth = {"authorization": "Bearer sk-sluice-dev"}
    found: list[float | None] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [ceiling(url) for url in urls]
        if None not in found:
            break
        httpx.post(f"{suite.edge}/v1/generate", json=body, headers=auth, timeout=10)
    return found


def second_router_cannot_reach_a_model(suite: RunningSuite) -> Path:
    """A candidate installation (`--candidate-bin`) whose first router is sound and
    whose second points at a closed port for its provider: it becomes SERVING (health
    does not depend on the provider) but fails its smoke request."""
    assert suite.run_dir is not None
    folder = suite.run_dir.parent / "candidate-bin"
    folder.mkdir(exist_ok=True)
    starts, script = folder / "router-starts", folder / "sluice"
    starts.unlink(missing_ok=True)
    closed = free_ports(1)[0]
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$2" = router ]; then echo x >> "{starts}"; fi\n'
        f'if [ "$2" = router ] && [ "$(wc -l < "{starts}")" -ge 2 ]; then\n'
        f"  export SLUICE_ROUTER_PROVIDER_ADDRESS=127.0.0.1:{closed}\n"
        "fi\n"
        f'exec "{BIN / "sluice"}" "$@"\n'
    )
    script.chmod(0o755)
    return script


async def test_rolling_rollback_restarts_the_replaced_replica_on_the_baseline(
    rollout_suite: tuple[RunningSuite, Webhook],
) -> None:
    suite, hook = rollout_suite
    assert suite.run_dir is not None
    before = control(suite)
    stable = before["stable_pool"]
    old = {r["name"]: r["pid"] for r in before["pools"][0]["replicas"]}
    assert len(old) == 2, before
    baseline_config = environ(next(iter(old.values())))["SLUICE_CONFIG"]
    adaptive = {"adaptive": {"max_limit": CANDIDATE_CEILING}}
    candidate = candidate_file(suite, "v1-second-fails", router={"admission": adaptive})
    binary = second_router_cannot_reach_a_model(suite)
    seen: dict[str, float] = {}

    def roll() -> subprocess.CompletedProcess[str]:
        with ThreadPoolExecutor(1) as pool:
            rolling = pool.submit(
                sluice_cli, suite, "rolling", "--candidate", str(candidate),
                "--candidate-bin", str(binary), "--wait",
            )  # fmt: skip
            # The candidate's first replica serves its share meanwhile: its ceiling shows
            # the candidate's configuration is the one running there.
            while not rolling.done():
                for found in control(suite)["pools"]:
                    for replica in found["replicas"] if found["name"] != stable else []:
                        value = ceiling(replica["metrics"])
                        if value is not None:
                            seen[replica["name"]] = value
                time.sleep(0.3)
            return rolling.result()

    result, run, began, ended = await with_load(suite, roll)
    figures = report("rolling, rolled back at the second replica", run, began, ended)
    status = json.loads(result.stdout)
    assert result.returncode == 1, (result.stderr, status)
    assert status["state"] == "rolled_back" and status["reason"] == "smoke", status
    assert (status["step"], status["steps"]) == (2, 2), status
    assert figures["failed"] == 0, figures
    assert CANDIDATE_CEILING in seen.values(), seen
    decisions = [d for d in status["decisions"] if d["version"] == "v1-second-fails"]
    steps = [d["message"] for d in decisions if d["decision"] == "step"]
    assert len(steps) == 1 and "replica 1/2" in steps[0], decisions
    replaced = steps[0].rsplit(" replaced ", 1)[1]
    assert replaced in old, steps
    message = decisions[-1]["message"]
    assert decisions[-1]["decision"] == "rolled_back", decisions
    assert "smoke request to" in message and f"{replaced} restarted on the baseline" in message
    # Every replica runs the baseline again: the replaced one restarted (a new process on
    # its own ports), the other never stopped; none is the candidate's.
    assert stable == status["stable_pool"] and edge_pools(suite) == {stable}
    assert [p["name"] for p in status["pools"]] == [stable]
    now = {r["name"]: r for r in status["pools"][0]["replicas"]}
    assert set(now) == set(old), now
    assert all(r["alive"] and not r["draining"] for r in now.values()), now
    assert now[replaced]["pid"] != old[replaced]
    assert [now[name]["pid"] for name in old if name != replaced] == [
        pid for name, pid in old.items() if name != replaced
    ]
    for replica in now.values():
        assert environ(replica["pid"])["SLUICE_CONFIG"] == baseline_config
        assert str(binary) not in cmdline(replica["pid"])
    # …and behaves as the baseline: its admission ceiling is the suite's.
    ceilings = ceilings_once_used(suite, [r["metrics"] for r in now.values()])
    assert None not in ceilings and CANDIDATE_CEILING not in ceilings, ceilings
    assert ("rolled_back", "smoke") in hook.decisions()
    assert (
        supervisor_metric_total(
            suite, "sluice_rollout_rollbacks_total", version="v1-second-fails", reason="smoke"
        )
        == 1
    )


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
    stable = control(suite)["stable_pool"]
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
    stable = control(suite)["stable_pool"]
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
    stable = control(suite)["stable_pool"]
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


async def test_canary_failing_its_health_check_is_rolled_back(
    rollout_suite: tuple[RunningSuite, Webhook],
) -> None:
    suite, hook = rollout_suite
    stable = control(suite)["stable_pool"]
    candidate = candidate_file(suite, "v7-hangs", router={"progress_interval_ms": 500})
    stopped: list[int] = []

    def hang_the_candidate() -> subprocess.CompletedProcess[str]:
        with ThreadPoolExecutor(1) as pool:
            # A long first step: only the health check can end it early.
            canary = pool.submit(
                sluice_cli, suite, "canary", "--candidate", str(candidate),
                "--analysis-window", "60", "--wait",
            )  # fmt: skip
            try:
                status = wait_for(
                    suite,
                    # This rollout's status: until the thread's canary starts, the
                    # endpoint still shows the previous one (rolled back, not running).
                    lambda s: (
                        s.get("version") == "v7-hangs"
                        and ("analysing" in phase(s) or s["state"] != "running")
                    ),
                    150,
                    "the first step",
                )
                assert status["state"] == "running", status
            except BaseException:
                # Else the 60 s steps run on, and the test's timeout hides this failure.
                with contextlib.suppress(Exception):
                    control(suite, "POST", "/v1/rollout/abort")
                raise
            pool_ = next(p for p in status["pools"] if p["name"] == status["candidate_pool"])
            pid = pool_["replicas"][0]["pid"]
            os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing: not SERVING
            stopped.append(pid)
            try:
                wait_for(
                    suite,
                    lambda s: s["state"] != "running" or phase(s).startswith(("rolling", "drain")),
                    60,
                    "the rollback",
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    control(suite, "POST", "/v1/rollout/abort")
                raise
            finally:
                # The rollback has begun; a stopped process would only hold its stop
                # (SIGTERM, then the grace, then SIGKILL) for 20 s.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            return canary.result()

    result, run, began, ended = await with_load(suite, hang_the_candidate)
    figures = report("canary failing its health check", run, began, ended)
    status = json.loads(result.stdout)
    assert result.returncode == 1, (result.stderr, status)
    assert status["state"] == "rolled_back" and status["reason"] == "health_check", status
    assert status["step"] == 1, status
    rolled_back = [d for d in status["decisions"] if d["decision"] == "rolled_back"][-1]
    assert "fails Envoy's health check" in rolled_back["message"], rolled_back
    assert status["stable_pool"] == stable and edge_pools(suite) == {stable}
    assert [p["name"] for p in status["pools"]] == [stable]
    # Only the candidate's 5 % share could fail (the streams it held when it stopped).
    assert figures["failed"] <= 0.05 * figures["requests"], figures
    assert ("rolled_back", "health_check") in hook.decisions()
    assert (
        supervisor_metric_total(
            suite, "sluice_rollout_rollbacks_total", version="v7-hangs", reason="health_check"
        )
        == 1
    )


async def test_canary_without_auto_promote_holds_until_promoted(
    rollout_suite: tuple[RunningSuite, Webhook],
) -> None:
    suite, hook = rollout_suite
    stable = control(suite)["stable_pool"]
    candidate = candidate_file(suite, "v8-manual", router={"progress_interval_ms": 400})
    # As many replicas as the baseline: each takes its pool's share, so the gates compare
    # like with like (they are not this test's subject: generous latency slack, as the
    # machine's load, not the candidate, sets a p99 here).
    settings = {
        "auto_promote": False,
        "steps": [50, 100],
        "analysis_window_s": 1,
        "canary_replicas": 2,
        "latency_slack_ms": 5000,
        "ttft_slack_ms": 5000,
    }
    held: list[dict[str, Any]] = []

    def hold_then_promote() -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        body = {"strategy": "canary", "candidate": str(candidate), "settings": settings}
        assert control(suite, "POST", "/v1/rollout", body)["state"] == "running"
        status = wait_for(
            suite, lambda s: "promote" in phase(s) or s["state"] != "running", 150, "the hold"
        )
        assert status["state"] == "running", status
        # Held: several analysis windows (and gate evaluations) pass, nothing moves on.
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            held.append(status)
            time.sleep(0.25)
            status = control(suite)
        held.append(status)
        promoted = sluice_cli(suite, "promote")
        return promoted, wait_for(suite, lambda s: s["state"] != "running", 120, "the promotion")

    (promoted, status), run, began, ended = await with_load(suite, hold_then_promote)
    figures = report("canary held, then promoted", run, began, ended)
    assert promoted.returncode == 0, promoted.stderr
    for look in held:
        assert look["state"] == "running", look
        assert "waiting for `sluice rollout promote`" in look["phase"], look
        assert (look["step"], look["steps"]) == (2, 2), look
        assert look["stable_pool"] == stable, look
        pools = {p["name"]: p for p in look["pools"]}
        assert set(pools) == {stable, look["candidate_pool"]}, look
        # The baseline stays up beside the candidate, ready to take the traffic back.
        assert [r["alive"] and not r["draining"] for r in pools[stable]["replicas"]] == [
            True,
            True,
        ], look
        assert pools[look["candidate_pool"]]["share_percent"] == 100, look
    assert status["state"] == "promoted", status
    assert status["stable_pool"] != stable and edge_pools(suite) == {status["stable_pool"]}
    assert [p["name"] for p in status["pools"]] == [status["stable_pool"]]
    assert len(status["pools"][0]["replicas"]) == 2, status
    assert figures["failed"] == 0, figures
    steps = [
        d for d in status["decisions"] if d["decision"] == "step" and d["version"] == "v8-manual"
    ]
    assert [d["weight_percent"] for d in steps] == [50, 100], steps
    assert ("promoted", "") in hook.decisions()


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
    stable = control(suite)["stable_pool"]
    candidate = candidate_file(suite, "v6-aborted", router={"progress_interval_ms": 600})
    started = sluice_cli(
        suite, "blue-green", "--candidate", str(candidate), "--rollback-window", "120"
    )
    assert started.returncode == 0, started.stderr
    status = wait_for(suite, lambda s: "warm" in phase(s) or s["state"] != "running", 90, "warm")
    assert status["state"] == "running" and "warm" in status["phase"], status
    assert edge_pools(suite) == {status["candidate_pool"]}
    # The executable itself, once: the other calls run its main() in this process.
    assert json.loads(sluice_rollout(suite, "abort").stdout)["state"] == "running"
    status = wait_for(suite, lambda s: s["state"] != "running", 90, "the abort")
    assert status["state"] == "aborted" and status["reason"] == "manual", status
    assert edge_pools(suite) == {stable}
    assert [p["name"] for p in status["pools"]] == [stable]
    assert ("aborted", "manual") in hook.decisions()
    again = sluice_cli(suite, "abort")
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
