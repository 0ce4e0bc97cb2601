"""Production on this machine: a suite run by `sluice up`, updated by canary rollouts.

`deploy`: when production is not up (its Envoy, at CONFIG's admin port, not ready), the
first deploy starts it (`sluice up`, detached, its logs in RUN_DIR/logs, its pid in
RUN_DIR.pid) and waits until it is healthy; when it is up, it rolls this build out to it
with `sluice rollout canary --candidate CONFIG --candidate-bin SLUICE --wait`, which
shifts traffic step by step, analyses each step and rolls back by itself when a gate
fails; the exit code says whether the candidate was promoted. A canary judges a step
only once the candidate has answered enough requests: where production has no traffic of
its own (this machine), `--traffic-rps` sends a bounded trickle of small completions
through the edge while the rollout runs, with the key in PROD_TRAFFIC_KEY.

`health`: production's Envoy is ready and every router host behind it passes Envoy's
active health check.

`down`: stops the production this script started (the process group of the pid in
RUN_DIR.pid: `sluice up` and every part it runs), SIGTERM first so that it drains, then
SIGKILL after --grace seconds. Production is long-lived by design (the next deploy rolls
out to it), so the pipeline leaves it running; `make production-down` runs this.
docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess  # nosec B404 - runs sluice with fixed argument lists
import sys
import threading
import time
import urllib.request
from pathlib import Path

from sluice.core.config import ConfigError
from sluice.launcher.settings import load_suite

NO_ROLLOUT = (
    "deploy to production needs `sluice rollout canary` (the router-pool rollouts, "
    "docs/deployment.md), and this sluice has no `rollout` command: merge the rollouts "
    "work first."
)


def _sluice(sluice: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # nosec B603 - fixed argv, no shell
        [sluice, *args], capture_output=True, text=True, check=False
    )


def _admin(config: str, path: str) -> str | None:
    settings = load_suite(config)
    url = f"http://127.0.0.1:{settings.envoy.admin_port}{path}"
    try:
        # Only ever Envoy's loopback admin interface.
        with urllib.request.urlopen(url, timeout=2.0) as response:  # nosec B310
            return str(response.read().decode(errors="replace"))
    except OSError:
        return None


def health(config: str) -> list[str]:
    """What is wrong with production (nothing when healthy)."""
    ready = _admin(config, "/ready")
    if ready is None or "LIVE" not in ready:
        return [f"Envoy is not ready (admin /ready: {ready!r})"]
    clusters = _admin(config, "/clusters") or ""
    flags = [
        line.split("::health_flags::", 1)
        for line in clusters.splitlines()
        if line.startswith("router") and "::health_flags::" in line
    ]
    if not flags:
        return ["Envoy lists no router host"]
    return [f"{host}: {flag}" for host, flag in flags if flag.strip() != "healthy"]


def _start(sluice: str, config: str, run_dir: Path, wait_s: float) -> int:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "sluice-up.log").open("ab") as log:
        process = subprocess.Popen(  # noqa: S603  # nosec B603 - fixed argv, no shell
            [sluice, "up", "--config", config, "--run-dir", str(run_dir),
             "--log-dir", str(logs)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    pid_file = run_dir.with_suffix(".pid")
    pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(f"production: `sluice up` exited {process.returncode}; see {logs}")
            pid_file.unlink(missing_ok=True)
            return 1
        if not health(config):
            print(f"production started (first deploy): pid {process.pid} in {pid_file}; "
                  "stop it with: make production-down")  # fmt: skip
            return 0
        time.sleep(1.0)
    # A first deploy that never became healthy leaves nothing behind.
    print(f"production: not healthy {wait_s:.0f} s after start, stopped; see {logs}")
    _stop(process.pid, 30.0)
    with contextlib.suppress(ChildProcessError):
        process.wait(timeout=5.0)
    pid_file.unlink(missing_ok=True)
    return 1


def _running(pid: int) -> bool:
    """`pid` exists and is not a zombie (one nobody has reaped yet has stopped all the same)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _stop(pid: int, grace_s: float) -> bool:
    """SIGTERM the process group `pid` leads, SIGKILL it after `grace_s`; True when the
    leader is gone."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        # Our own child when stopping a start that failed: reap it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _running(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return False


def down(run_dir: Path, grace_s: float) -> int:
    """Stop production when this script started it and it still runs."""
    pid_file = run_dir.with_suffix(".pid")
    pid = _alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        print("production is not running (nothing to stop)")
        return 0
    # A stale pid file may name a pid reused by something else: only ever our `sluice up`.
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if b"up" not in argv or str(run_dir).encode() not in argv:
        pid_file.unlink(missing_ok=True)
        print(f"production is not running (pid {pid} is not its `sluice up`; nothing stopped)")
        return 0
    drained = _stop(pid, grace_s)
    pid_file.unlink(missing_ok=True)
    how = "stopped" if drained else f"killed (not stopped {grace_s:.0f} s after SIGTERM)"
    print(f"production (pid {pid}) {how}")
    return 0


def _alive(pid_file: Path) -> int | None:
    """The pid in the file when that process still runs."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _edge(config: str) -> str:
    settings = load_suite(config)
    return f"http://127.0.0.1:{settings.envoy.port}"


def _send(url: str, key: str, body: dict[str, object] | None = None) -> bytes:
    request = urllib.request.Request(  # noqa: S310 - our own edge, http on loopback
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10.0) as response:  # noqa: S310  # nosec B310
        return bytes(response.read())


def _trickle(edge: str, key: str, rps: float, stop: threading.Event, sent: list[int]) -> None:
    """Small completions at `rps` until `stop` (or 30 minutes): sent[0] ok, sent[1] failed."""
    model = json.loads(_send(f"{edge}/v1/models", key))["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 4}
    deadline = time.monotonic() + 1800
    while not stop.wait(1.0 / rps) and time.monotonic() < deadline:
        try:
            _send(f"{edge}/v1/chat/completions", key, body)
            sent[0] += 1
        except OSError:
            sent[1] += 1


def deploy(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    problems = health(args.config)
    if problems:
        pid = _alive(run_dir.with_suffix(".pid"))
        if pid is not None:
            print(f"production (pid {pid}) runs but is unhealthy: {'; '.join(problems)}")
            return 1
        return _start(args.sluice, args.config, run_dir, args.start_timeout)
    if _sluice(args.sluice, "rollout", "--help").returncode != 0:
        print(NO_ROLLOUT, file=sys.stderr)
        return 3
    argv = ["rollout", "canary", "--candidate", args.config, "--candidate-bin",
            args.sluice, "--label", args.label, "--steps", args.steps,
            "--analysis-window", str(args.analysis_window), "--wait",
            "--run-dir", str(run_dir)]  # fmt: skip
    print(f"production: $ sluice {' '.join(argv)}", flush=True)
    stop, sent = threading.Event(), [0, 0]
    key = os.environ.get("PROD_TRAFFIC_KEY", "")
    if args.traffic_rps > 0 and not key:
        print("production: --traffic-rps needs the key in PROD_TRAFFIC_KEY", file=sys.stderr)
        return 2
    trickle = threading.Thread(
        target=_trickle, args=(_edge(args.config), key, args.traffic_rps, stop, sent), daemon=True
    )
    if args.traffic_rps > 0:
        trickle.start()
    try:
        done = subprocess.run([args.sluice, *argv], check=False)  # noqa: S603  # nosec B603
    finally:
        stop.set()
    if args.traffic_rps > 0:
        trickle.join(timeout=15.0)
        print(f"production: traffic during the rollout: {sent[0]} answered, {sent[1]} failed")
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sluice", default=str(Path(sys.executable).parent / "sluice"))
    parser.add_argument("--config", required=True, help="production's suite YAML")
    parser.add_argument("--run-dir", default=".run/production")
    commands = parser.add_subparsers(dest="command", required=True)
    deploy_command = commands.add_parser("deploy", help="start, or canary-roll this build")
    deploy_command.add_argument("--label", default=os.environ.get("REVISION", "candidate"))
    deploy_command.add_argument("--steps", default="5,25,50,100")
    deploy_command.add_argument("--analysis-window", type=float, default=30.0)
    deploy_command.add_argument("--start-timeout", type=float, default=180.0)
    deploy_command.add_argument(
        "--traffic-rps", type=float, default=0.0, help="synthetic requests/s during a rollout"
    )
    commands.add_parser("health", help="Envoy ready, every router host healthy")
    down_command = commands.add_parser("down", help="stop the production started here")
    down_command.add_argument("--grace", type=float, default=40.0, help="seconds to drain")
    args = parser.parse_args(argv)
    if args.command == "down":
        return down(Path(args.run_dir), args.grace)
    try:
        if args.command == "deploy":
            return deploy(args)
        problems = health(args.config)
    except ConfigError as err:
        print(f"production: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"production unhealthy: {problem}")
    if not problems:
        print("production healthy: Envoy ready, every router host passes its health check")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
