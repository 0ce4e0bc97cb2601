"""`sluice`: start the suite (`sluice up`), print its Envoy configuration, or show
where time goes (`sluice top`).

`sluice up` restarts any part that exits (see launcher/supervisor.py); SIGHUP makes it
hot-restart Envoy on a freshly rendered configuration without closing its listeners."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import grpc

from sluice.core.config import ConfigError
from sluice.launcher.envoy import descriptor_path, render_yaml
from sluice.launcher.settings import load_suite
from sluice.launcher.supervisor import StartupError, Suite
from sluice.launcher.top import fetch

_TICK_S = 0.1


def _up(args: argparse.Namespace) -> int:
    settings = load_suite(args.config)
    if args.provider_replicas is not None:
        provider = settings.provider.model_copy(update={"replicas": args.provider_replicas})
        settings = dataclasses.replace(settings, provider=provider)
    suite = Suite(
        settings,
        run_dir=Path(args.run_dir),
        log_dir=Path(args.log_dir) if args.log_dir else None,
        start_envoy=False if args.no_envoy else None,
    )
    wake = threading.Event()
    stop = threading.Event()
    hot_restart = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    def request_hot_restart(signum: int, frame: FrameType | None) -> None:
        hot_restart.set()
        wake.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_hot_restart)
    try:
        suite.start()
    except StartupError as err:
        print(f"sluice up: {err}", file=sys.stderr)
        return 1
    print(suite.banner(), flush=True)
    while not stop.is_set():
        # A short tick: a part's exit is seen within it, so recovery starts quickly.
        wake.wait(_TICK_S)
        wake.clear()
        if stop.is_set():
            break
        if hot_restart.is_set():
            hot_restart.clear()
            suite.hot_restart_envoy()
        suite.supervise()
    print("stopping...", flush=True)
    suite.stop()
    print("stopped.", flush=True)
    return 0


def _envoy_config(args: argparse.Namespace) -> int:
    settings = load_suite(args.config)
    descriptor = Path(args.descriptor) if args.descriptor else descriptor_path()
    text = render_yaml(settings, descriptor)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _top(args: argparse.Namespace) -> int:
    if args.address:
        address = args.address
    else:
        server = load_suite(args.config).telemetry.server
        address = f"{server.host}:{server.port}"
    try:
        sys.stdout.write(fetch(address, args.window, args.limit))
    except grpc.RpcError as err:
        print(f"sluice top: telemetry at {address}: {err.code().name}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the whole suite in the foreground")
    up.add_argument(
        "--config", help="suite YAML file (default: $SLUICE_CONFIG or built-in defaults)"
    )
    up.add_argument("--run-dir", default=".run", help="where generated files go (default .run)")
    up.add_argument("--log-dir", help="write each part's log to DIR/<part>.log instead of stderr")
    up.add_argument("--no-envoy", action="store_true", help="start the services only")
    up.add_argument(
        "--provider-replicas",
        type=int,
        choices=range(1, 17),
        metavar="N",
        help="provider processes to start (default: provider.replicas, 1)",
    )
    up.set_defaults(run=_up)
    envoy = commands.add_parser("envoy-config", help="print the Envoy configuration")
    envoy.add_argument("--config", help="suite YAML file")
    envoy.add_argument("--descriptor", help="path of sluice.binpb as Envoy will see it")
    envoy.add_argument("--output", help="write to this file instead of stdout")
    envoy.set_defaults(run=_envoy_config)
    top = commands.add_parser("top", help="slowest operations and time per span kind")
    top.add_argument("--config", help="suite YAML file (for the telemetry address)")
    top.add_argument("--address", help="telemetry host:port (overrides --config)")
    top.add_argument("--window", type=int, default=60, help="window in seconds (default 60)")
    top.add_argument("--limit", type=int, default=10, help="operations to list (default 10)")
    top.set_defaults(run=_top)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as err:
        print(f"sluice: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
