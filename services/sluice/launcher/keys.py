"""`sluice keys create|list|revoke|rotate`: manage the router's key store (router/keystore.py).

The store file and its server secret come from the suite's settings
(`router.keys.store_path`, `router.keys.secret_path`) or `--store`/`--secret`. A new
key's secret is printed once, on stdout, and never stored or shown again; `list` shows
ids and metadata only. Writes are serialised by a lock file and replace the store
atomically, so the router (which re-reads it on change) sees one store or the other.
Every action is written to the audit log (`<audit.directory>/keys.jsonl`) with the key
id, never the secret, whether or not `audit.enabled` is on: key changes are always
worth a record (docs/security.md).
"""

from __future__ import annotations

import argparse
import datetime
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> datetime.timedelta:
    """`90`, `30s`, `15m`, `2h`, `7d`, `1w` as a duration."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 15m, 2h, 7d)")
    return datetime.timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


def _key_id(text: str) -> str:
    # Imported when a key id is given, not when the parser is built (launcher/cli.py):
    # the key store's module loads pydantic.
    from sluice.router.keystore import KEY_ID_PATTERN  # noqa: PLC0415

    if not re.fullmatch(KEY_ID_PATTERN, text):
        raise argparse.ArgumentTypeError("a key id is 1-64 of A-Z a-z 0-9 _ . -")
    return text


def _run(args: argparse.Namespace) -> int:
    # Imported only for `sluice keys`: the actions load the suite's settings and the key
    # store, seconds of imports that the parser, built by every command, must not pay.
    from sluice.launcher.key_admin import run  # noqa: PLC0415

    return run(args)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sluice keys ...` on the main command line (launcher/cli.py)."""
    keys = commands.add_parser(
        "keys",
        help="create, list, revoke and rotate API keys in the key store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="suite YAML file (default: $SLUICE_CONFIG)")
    common.add_argument("--store", help="key store file (default: router.keys.store_path)")
    common.add_argument("--secret", help="server secret file (default: router.keys.secret_path)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", parents=[common], help="add a key; prints it once")
    create.add_argument("--id", type=_key_id, help="key id (default: key-<random>)")
    create.add_argument("--tenant", default="default", help="owning tenant")
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument("--expires", type=parse_duration, help="lifetime, e.g. 90d")
    create.add_argument(
        "--model", action="append", help="allowed model alias (repeatable; default all)"
    )
    create.add_argument(
        "--tier", default="normal", choices=("premium", "critical", "normal", "background")
    )
    create.add_argument("--rpm", type=int, help="the key's own requests per minute")
    create.add_argument("--budget", type=float, help="currency budget per budget period")
    create.add_argument("--max-streams", type=int, help="concurrent streams (default: by tier)")
    listing = actions.add_parser("list", parents=[common], help="show keys (never secrets)")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    revoke = actions.add_parser("revoke", parents=[common], help="refuse a key from now on")
    revoke.add_argument("key_id", type=_key_id)
    rotate = actions.add_parser(
        "rotate", parents=[common], help="new secret; the old one works for --overlap"
    )
    rotate.add_argument("key_id", type=_key_id)
    rotate.add_argument(
        "--overlap", type=parse_duration, default="1h", help="old secret's grace (default 1h)"
    )
    keys.set_defaults(run=_run)
