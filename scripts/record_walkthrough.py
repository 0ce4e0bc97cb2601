"""Record the quick-start walkthrough (scripts/walkthrough.sh) with asciinema against a
real suite, so it can be re-recorded after any change.

Usage: python scripts/record_walkthrough.py [OUT.cast]   (default: docs/training/walkthrough.cast)

Starts `sluice up` on free loopback ports with the development key, waits for its banner,
records the walkthrough (asciicast v2, 100x30), then stops the suite by its process id.
tests/docs/test_walkthrough.py records one into a temporary file and checks what it shows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess  # nosec B404 - starts the suite and asciinema
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_OUT = ROOT / "docs" / "training" / "walkthrough.cast"
PORTS = (
    "envoy", "envoy_admin", "router", "router_metrics", "router_http", "limiter",
    "limiter_metrics", "provider", "provider_metrics", "telemetry", "telemetry_metrics",
    "supervisor_metrics",
)  # fmt: skip


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def suite_config(ports: dict[str, int]) -> dict[str, object]:
    """The default suite on the given ports; the simulated model paces a visible stream."""
    return {
        "router": {
            "server": {"port": ports["router"], "metrics_port": ports["router_metrics"]},
            "http_api": {"port": ports["router_http"]},
            "limiter_address": f"127.0.0.1:{ports['limiter']}",
            "provider_address": f"127.0.0.1:{ports['provider']}",
            # The walkthrough uses the public development key, as `make up` (--dev) does.
            "dev_mode": True,
        },
        "limiter": {"server": {"port": ports["limiter"], "metrics_port": ports["limiter_metrics"]}},
        "provider": {
            "server": {"port": ports["provider"], "metrics_port": ports["provider_metrics"]},
            # A visible stream: about 15 tokens a second.
            "backends": {
                "simulated": {
                    "time_to_first_token_ms": 80,  # nosec B105 - a latency, not a secret
                    "tokens_per_second": 15,
                },
            },
        },
        "telemetry": {
            "server": {"port": ports["telemetry"], "metrics_port": ports["telemetry_metrics"]}
        },
        "tracing": {"endpoint": f"127.0.0.1:{ports['telemetry']}"},
        "envoy": {"port": ports["envoy"], "admin_port": ports["envoy_admin"]},
        "supervisor": {"metrics_port": ports["supervisor_metrics"]},
    }


def record(out: Path) -> None:
    """Start a suite, record the walkthrough into `out`, stop the suite."""
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "sluice.yaml"
        config.write_text(yaml.safe_dump(suite_config(ports)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        command = [str(BIN / "sluice"), "up", "--config", str(config),
                   "--log-dir", str(work / "logs"), "--run-dir", str(work / "run")]  # fmt: skip
        suite = subprocess.Popen(  # noqa: S603  # nosec B603 - fixed argv, no shell
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        try:
            _wait_for_banner(suite)
            walk_env = {**env, "EDGE": f"http://127.0.0.1:{ports['envoy']}", "COLUMNS": "100"}
            out.parent.mkdir(parents=True, exist_ok=True)
            recorder = [str(BIN / "asciinema"), "rec", "--quiet", "--overwrite", "--cols", "100",
                        "--rows", "30", "--title", "Sluice quick start", "--command",
                        f"bash {ROOT / 'scripts' / 'walkthrough.sh'}", str(out)]  # fmt: skip
            subprocess.run(  # noqa: S603  # nosec B603 - fixed argv, no shell
                recorder, stdin=subprocess.DEVNULL, env=walk_env, check=True, timeout=120
            )
        finally:
            suite.send_signal(signal.SIGTERM)
            try:
                suite.wait(timeout=40)
            except subprocess.TimeoutExpired:
                suite.kill()
                suite.wait()
            if suite.stdout is not None:
                suite.stdout.close()


def _wait_for_banner(suite: subprocess.Popen[str]) -> None:
    if suite.stdout is None:
        raise SystemExit("sluice up's output is not captured")
    deadline = time.monotonic() + 90
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = suite.stdout.readline()
        if not line:
            raise SystemExit("sluice up exited early:\n" + "".join(seen))
        seen.append(line)
        if line.startswith("Ctrl-C stops everything"):
            return
    raise SystemExit("sluice up did not print its banner within 90 s")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    record(out)
    print(f"recorded {out}")


if __name__ == "__main__":
    main()
