"""`sluice`: start the suite (`sluice up`), run one part of it in the foreground
(`sluice serve PART`, `sluice envoy`: what each container of the image runs), print its
Envoy configuration, show where time goes (`sluice top`), create the suite's mTLS
certificates (`sluice certs`), manage API keys (`sluice keys`, launcher/keys.py), or
erase a user's data (`sluice privacy erase`).

`sluice up` restarts any part that exits (see launcher/supervisor.py); SIGHUP makes it
hot-restart Envoy on a freshly rendered configuration without closing its listeners."""

from __future__ import annotations

import argparse
import dataclasses
import os
import runpy
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

# Only light modules here: every command, `sluice --version` too, builds the whole parser,
# while the settings, gRPC, Sentry and OpenTelemetry modules take seconds of CPU to import
# on a loaded machine. Each handler imports what its command runs.
from sluice.core.config_error import ConfigError
from sluice.launcher import keys, privacy
from sluice.launcher.names import MAX_REPLICAS, REPLICATED, SERVICES
from sluice.launcher.report import cli as report_commands
from sluice.launcher.rollout.commands import add_commands as add_rollout_commands

RUN_DIR_ENV = "SLUICE_RUN_DIR"
"""Where `sluice envoy` writes its rendered bootstrap (a writable path in the image)."""


class _VersionAction(argparse.Action):
    """`--version`, computed only when asked (it may run git)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help=str(kwargs.get("help", "")))

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from sluice.launcher.version import version_text  # importlib.metadata: when asked

        print(version_text())
        parser.exit()


_TICK_S = 0.1


def _up(args: argparse.Namespace) -> int:
    from sluice.launcher.parts import StartupError
    from sluice.launcher.settings import load_suite
    from sluice.launcher.supervisor import Suite

    settings = load_suite(args.config)
    if args.dev:
        router = settings.router.model_copy(update={"dev_mode": True})
        settings = dataclasses.replace(settings, router=router)
    if args.provider_replicas is not None:
        provider = settings.provider.model_copy(update={"replicas": args.provider_replicas})
        settings = dataclasses.replace(settings, provider=provider)
    if args.replicas:
        counts = settings.supervisor.replicas | args.replicas
        supervisor = settings.supervisor.model_copy(update={"replicas": counts})
        settings = dataclasses.replace(settings, supervisor=supervisor)
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


def parse_replicas(text: str) -> dict[str, int]:
    """`router=2,provider=2` as {"router": 2, "provider": 2} (argparse reports a ValueError)."""
    counts: dict[str, int] = {}
    for item in text.split(","):
        part, _, number = item.strip().partition("=")
        if part not in REPLICATED:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a replicated part ({', '.join(REPLICATED)})"
            )
        if not number.isdigit() or not 1 <= int(number) <= MAX_REPLICAS:
            raise argparse.ArgumentTypeError(
                f"{part}={number}: give a count from 1 to {MAX_REPLICAS}"
            )
        counts[part] = int(number)
    return counts


def _serve(args: argparse.Namespace) -> int:
    # The part's own entry point (its package's __main__, what `sluice up` starts as a
    # child), run in this process so the container's init signals the service itself.
    from sluice.core.config import CONFIG_ENV

    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    runpy.run_module(f"sluice.{args.part}", run_name="__main__", alter_sys=True)
    return 0


def _envoy(args: argparse.Namespace) -> int:
    from sluice.launcher.parts import StartupError, envoy_argv, write_envoy_config
    from sluice.launcher.settings import load_suite

    settings = load_suite(args.config)
    try:
        argv = envoy_argv(settings, write_envoy_config(settings, Path(args.run_dir)))
    except StartupError as err:
        print(f"sluice envoy: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"sluice envoy: cannot write to {args.run_dir}: {err.strerror}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Envoy replaces this process: it gets the init's SIGTERM and drains by itself.
    os.execv(argv[0], argv)  # noqa: S606  # nosec B606


def _envoy_config(args: argparse.Namespace) -> int:
    from sluice.launcher.envoy import descriptor_path, render_yaml
    from sluice.launcher.settings import load_suite, with_certs_dir

    settings = load_suite(args.config)
    if args.certs_dir:
        settings = with_certs_dir(settings, Path(args.certs_dir))
    descriptor = Path(args.descriptor) if args.descriptor else descriptor_path()
    text = render_yaml(settings, descriptor)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _k8s_render(args: argparse.Namespace) -> int:
    from sluice.launcher.k8s.render import render, stale, write

    texts = render(Path(args.values))
    output = Path(args.output)
    if args.check:
        differing = stale(texts, output)
        for relative in differing:
            print(f"sluice k8s render: {output / relative} is stale", file=sys.stderr)
        return 1 if differing else 0
    try:
        changed = write(texts, output)
    except OSError as err:
        print(f"sluice k8s render: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 1
    for path in changed:
        print(f"wrote {path}")
    return 0


def _top(args: argparse.Namespace) -> int:
    import grpc

    from sluice.core.grpcx.tls import OPERATOR, client_tls
    from sluice.launcher.settings import load_suite
    from sluice.launcher.top import fetch

    telemetry = load_suite(args.config).telemetry
    address = args.address or f"{telemetry.server.host}:{telemetry.server.port}"
    security = telemetry.security
    if args.certs:
        security = security.model_copy(update={"certs_dir": Path(args.certs)})
    elif security.mtls and security.certs_dir is None and security.ca_path is None:
        security = security.model_copy(update={"certs_dir": Path(".run/certs")})
    # Telemetry's query API answers only the operator's identity under mtls.
    operator = security.model_copy(update={"identity": OPERATOR})
    try:
        tls = client_tls(operator, OPERATOR, "telemetry")
        sys.stdout.write(fetch(address, args.window, args.limit, tls=tls))
    except grpc.RpcError as err:
        print(f"sluice top: telemetry at {address}: {err.code().name}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"sluice top: operator certificate: {err}", file=sys.stderr)
        return 1
    return 0


def _certs(args: argparse.Namespace) -> int:
    from sluice.core.grpcx.certs import SUITE_IDENTITIES, write_suite_certs

    directory = Path(args.dir)
    identities = tuple(args.identity) if args.identity else SUITE_IDENTITIES
    try:
        written = write_suite_certs(directory, identities, days=args.days)
    except (OSError, ValueError) as err:
        print(f"sluice certs: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    print(
        f"set security.certs_dir: {directory.resolve()} (mutual TLS is on by default; "
        "`sluice up` creates <run dir>/certs by itself)",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version and build revision"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the whole suite in the foreground")
    up.add_argument(
        "--config", help="suite YAML file (default: $SLUICE_CONFIG or built-in defaults)"
    )
    up.add_argument("--run-dir", default=".run", help="where generated files go (default .run)")
    up.add_argument("--log-dir", help="write each part's log to DIR/<part>.log instead of stderr")
    up.add_argument("--no-envoy", action="store_true", help="start the services only")
    up.add_argument(
        "--dev",
        action="store_true",
        help="dev mode: accept the public development key sk-sluice-dev (router.dev_mode); "
        "refused on an edge beyond loopback",
    )
    up.add_argument(
        "--provider-replicas",
        type=int,
        choices=range(1, 17),
        metavar="N",
        help="provider processes to start (default: provider.replicas, 1)",
    )
    up.add_argument(
        "--replicas",
        type=parse_replicas,
        metavar="PART=N,...",
        help="processes per part, e.g. router=2,provider=2,limiter=2 (default: "
        "supervisor.replicas, 1 each; docs/runtime.md)",
    )
    up.set_defaults(run=_up)
    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("part", choices=SERVICES, help="the service to run")
    serve.add_argument(
        "--config", help="suite YAML file (default: $SLUICE_CONFIG or built-in defaults)"
    )
    serve.set_defaults(run=_serve)
    envoy_run = commands.add_parser("envoy", help="run the Envoy front in the foreground")
    envoy_run.add_argument(
        "--config", help="suite YAML file (default: $SLUICE_CONFIG or built-in defaults)"
    )
    envoy_run.add_argument(
        "--run-dir",
        default=os.environ.get(RUN_DIR_ENV, ".run"),
        help=f"where the rendered envoy.yaml goes (default ${RUN_DIR_ENV} or .run)",
    )
    envoy_run.set_defaults(run=_envoy)
    envoy = commands.add_parser("envoy-config", help="print the Envoy configuration")
    envoy.add_argument("--config", help="suite YAML file")
    envoy.add_argument("--descriptor", help="path of sluice.binpb as Envoy will see it")
    envoy.add_argument("--output", help="write to this file instead of stdout")
    envoy.add_argument(
        "--certs-dir",
        help="where Envoy finds ca.pem and envoy.pem under mtls (overrides security.certs_dir)",
    )
    envoy.set_defaults(run=_envoy_config)
    k8s = commands.add_parser("k8s", help="Kubernetes manifests from the suite's settings")
    k8s_commands = k8s.add_subparsers(dest="k8s_command", required=True)
    k8s_render = k8s_commands.add_parser(
        "render", help="write base, staging and production manifests"
    )
    k8s_render.add_argument("--values", required=True, help="values file (deploy/k8s/values.yaml)")
    k8s_render.add_argument("--output", required=True, help="directory of the outputs")
    k8s_render.add_argument(
        "--check", action="store_true", help="write nothing; fail when the output is stale"
    )
    k8s_render.set_defaults(run=_k8s_render)
    top = commands.add_parser("top", help="slowest operations and time per span kind")
    top.add_argument("--config", help="suite YAML file (for the telemetry address)")
    top.add_argument("--address", help="telemetry host:port (overrides --config)")
    top.add_argument("--window", type=int, default=60, help="window in seconds (default 60)")
    top.add_argument("--limit", type=int, default=10, help="operations to list (default 10)")
    top.add_argument(
        "--certs",
        help="the operator certificate's directory under mtls (default: security.certs_dir "
        "or .run/certs, what `sluice up` makes)",
    )
    top.set_defaults(run=_top)
    certs = commands.add_parser(
        "certs",
        help="create a local CA and a certificate per service, Envoy and the operator",
        description="Writes ca.pem (kept when present, so re-running renews the leaves "
        "only), <identity>.pem and <identity>-key.pem for mutual TLS (docs/security.md).",
    )
    certs.add_argument("--dir", default=".run/certs", help="where to write (default .run/certs)")
    certs.add_argument(
        "--days", type=int, default=365, help="validity of the certificates (default 365)"
    )
    certs.add_argument(
        "--identity",
        action="append",
        metavar="NAME",
        help="issue only for NAME (repeatable; default: every suite identity)",
    )
    certs.set_defaults(run=_certs)
    keys.add_parser(commands)
    report_commands.add_commands(commands)
    add_rollout_commands(commands)
    privacy.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as err:
        print(f"sluice: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
