"""`sluice privacy`: erase a user's data (GDPR Art. 17) and find their audit records.

`erase` calls, as the operator identity, the telemetry service's EraseUser (traces) and
each router's RouterAdminService/EraseUser (cached answers), and prints what each
deleted; `digest` prints how audit records name the user (core/erasure.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

    from sluice.core.config import SecuritySettings

# gRPC, the settings and the stubs are imported inside the functions that call them:
# add_parser runs for every `sluice` command (launcher/cli.py), these only for this one.

TIMEOUT_S = 10.0


def _channel(
    address: str, security: SecuritySettings, server: str, certs: Path | None
) -> grpc.Channel:
    """A channel to `server` at `address`, as the operator under mtls (certificates from
    `certs`, else the settings', else `.run/certs` as `sluice up` makes them)."""
    import grpc  # noqa: PLC0415

    from sluice.core.grpcx.tls import OPERATOR, client_tls  # noqa: PLC0415

    if certs is not None:
        security = security.model_copy(update={"certs_dir": certs, "ca_path": None})
    elif security.mtls and security.certs_dir is None and security.ca_path is None:
        security = security.model_copy(update={"certs_dir": Path(".run/certs")})
    operator = security.model_copy(update={"identity": OPERATOR})
    tls = client_tls(operator, OPERATOR, server)
    return (
        grpc.insecure_channel(address)
        if tls is None
        else grpc.secure_channel(address, tls.credentials, options=tls.options)
    )


def erase(
    user: str,
    *,
    config: str | None,
    telemetry: str | None,
    routers: Sequence[str],
    certs: Path | None = None,
) -> list[str]:
    """Erase `user` everywhere; one line of outcome per service (raises grpc.RpcError)."""
    from sluice.launcher.settings import load_suite  # noqa: PLC0415
    from sluice.router.v1 import admin_pb2, admin_pb2_grpc  # noqa: PLC0415
    from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc  # noqa: PLC0415

    suite = load_suite(config)
    lines = []
    address = telemetry or f"{suite.telemetry.server.host}:{suite.telemetry.server.port}"
    with _channel(address, suite.telemetry.security, "telemetry", certs) as channel:
        traces = telemetry_pb2_grpc.TelemetryServiceStub(channel).EraseUser(
            telemetry_pb2.EraseUserRequest(user_id=user), timeout=TIMEOUT_S
        )
    lines.append(
        f"telemetry {address}: {traces.traces_deleted} traces "
        f"({traces.spans_deleted} spans) deleted"
    )
    router = suite.router.server
    for address in routers or [f"{router.host}:{router.port}"]:
        with _channel(address, suite.router.security, "router", certs) as channel:
            cached = admin_pb2_grpc.RouterAdminServiceStub(channel).EraseUser(
                admin_pb2.EraseUserRequest(user_id=user), timeout=TIMEOUT_S
            )
        lines.append(f"router {address}: {cached.cache_entries_deleted} cached answers deleted")
    return lines


def run(args: argparse.Namespace) -> int:
    """The `sluice privacy` command."""
    import grpc  # noqa: PLC0415

    from sluice.core.erasure import user_digest  # noqa: PLC0415

    if args.privacy_command == "digest":
        print(user_digest(args.user))
        return 0
    try:
        for line in erase(
            args.user,
            config=args.config,
            telemetry=args.telemetry,
            routers=args.router or [],
            certs=Path(args.certs) if args.certs else None,
        ):
            print(line)
    except grpc.RpcError as err:
        print(f"sluice privacy erase: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"sluice privacy erase: operator certificate: {err}", file=sys.stderr)
        return 1
    print(f"audit records name the user as {user_digest(args.user)}")
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sluice privacy erase|digest` on the CLI's sub-commands."""
    privacy = commands.add_parser("privacy", help="erase a user's traces and cached answers")
    sub = privacy.add_subparsers(dest="privacy_command", required=True)
    erase_cmd = sub.add_parser(
        "erase",
        help="delete the user's traces (telemetry) and cached answers (router), audited",
    )
    erase_cmd.add_argument("--user", required=True, help="the end-user id (the request's user)")
    erase_cmd.add_argument("--config", help="suite YAML file (for the addresses and mtls)")
    erase_cmd.add_argument("--telemetry", help="telemetry host:port (overrides --config)")
    erase_cmd.add_argument(
        "--router",
        action="append",
        metavar="HOST:PORT",
        help="a router replica (repeatable; default: the configured router)",
    )
    erase_cmd.add_argument(
        "--certs",
        help="directory of ca.pem and operator.pem (default: the settings' or .run/certs)",
    )
    digest = sub.add_parser("digest", help="how the audit log names a user")
    digest.add_argument("--user", required=True, help="the end-user id")
    privacy.set_defaults(run=run)
