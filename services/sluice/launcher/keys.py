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
import contextlib
import datetime
import fcntl
import getpass
import json
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from sluice.core.audit import AdminRecord, AuditLog
from sluice.launcher.settings import load_suite
from sluice.router.keystore import (
    KEY_ID_PATTERN,
    Digest,
    KeyEntry,
    KeyStoreError,
    RateLimit,
    StoreFile,
    key_digest,
    load_secret,
    new_key,
    read_store,
    write_store,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class KeysError(Exception):
    """A refused `sluice keys` action (the message says why)."""


def parse_duration(text: str) -> datetime.timedelta:
    """`90`, `30s`, `15m`, `2h`, `7d`, `1w` as a duration."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 15m, 2h, 7d)")
    return datetime.timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _key_id(text: str) -> str:
    if not re.fullmatch(KEY_ID_PATTERN, text):
        raise argparse.ArgumentTypeError("a key id is 1-64 of A-Z a-z 0-9 _ . -")
    return text


class KeyAdmin:
    """The store and its secret, the audit log, and the actions on them."""

    def __init__(
        self, store: Path, secret: Path, audit: AuditLog, settings_ids: frozenset[str]
    ) -> None:
        self.store = store
        self.secret = secret
        self._audit = audit
        self._settings_ids = settings_ids
        self._actor = f"sluice keys ({getpass.getuser()})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[StoreFile]:
        """The store, read under an exclusive lock and written back when the block ends."""
        self.store.parent.mkdir(parents=True, exist_ok=True)
        lock = self.store.with_name(self.store.name + ".lock")
        with lock.open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            store = read_store(self.store)
            yield store
            write_store(self.store, store)

    def _record(self, action: str, key_id: str, detail: str = "") -> None:
        self._audit.admin(AdminRecord(action, self._actor, key_id, detail=detail, service="keys"))

    def refused(self, action: str, key_id: str, why: str) -> None:
        """Audit an action that was refused (a bad id, a revoked key...)."""
        self._audit.admin(AdminRecord(action, self._actor, key_id, "refused", why, service="keys"))

    def create(self, entry: KeyEntry) -> str:
        """Add a key; its secret (returned, to print once)."""
        if entry.id in self._settings_ids:
            raise KeysError(f"key id {entry.id!r} is already used by router.api_keys")
        secret = load_secret(self.secret, create=True)
        key = new_key()
        digest = Digest(hmac=key_digest(secret, key), created=entry.created)
        with self._locked() as store:
            if store.find(entry.id) is not None:
                raise KeysError(f"key id {entry.id!r} exists in {self.store}")
            store.keys.append(entry.model_copy(update={"digests": [digest]}))
        self._record("key.created", entry.id, f"tenant={entry.tenant} tier={entry.tier}")
        return key

    def revoke(self, key_id: str) -> None:
        """Refuse the key from the router's next look at the store (no restart)."""
        with self._locked() as store:
            entry = _existing(store, key_id, self.store)
            if entry.state == "revoked":
                raise KeysError(f"key {key_id!r} is already revoked")
            entry.state = "revoked"
            entry.revoked = _now()
        self._record("key.revoked", key_id)

    def rotate(self, key_id: str, overlap: datetime.timedelta) -> str:
        """A new secret for the key; the current ones keep working for `overlap`."""
        secret = load_secret(self.secret, create=True)
        key = new_key()
        now = _now()
        with self._locked() as store:
            entry = _existing(store, key_id, self.store)
            if entry.state == "revoked":
                raise KeysError(f"key {key_id!r} is revoked: create a new one")
            end = now + overlap
            kept = []
            for digest in entry.digests:
                if digest.not_after is not None and digest.not_after <= now:
                    continue  # long past its overlap: drop it from the store
                if digest.not_after is None or digest.not_after > end:
                    digest.not_after = end
                kept.append(digest)
            entry.digests = [*kept, Digest(hmac=key_digest(secret, key), created=now)]
        self._record("key.rotated", key_id, f"overlap_s={overlap.total_seconds():g}")
        return key

    def entries(self) -> list[KeyEntry]:
        """Every entry (revoked ones too)."""
        return read_store(self.store).keys


def _existing(store: StoreFile, key_id: str, path: Path) -> KeyEntry:
    entry = store.find(key_id)
    if entry is None:
        raise KeysError(f"no key {key_id!r} in {path}")
    return entry


def _describe(entry: KeyEntry, now: datetime.datetime) -> dict[str, object]:
    """What `list` shows of an entry: everything but the digests."""
    state: str = entry.state
    if state == "active" and entry.expires is not None and entry.expires <= now:
        state = "expired"
    return {
        "id": entry.id,
        "tenant": entry.tenant,
        "name": entry.name,
        "state": state,
        "tier": entry.tier,
        "models": entry.models,
        "created": entry.created.isoformat(),
        "expires": entry.expires.isoformat() if entry.expires else None,
        "requests_per_minute": entry.rate_limit.requests_per_minute if entry.rate_limit else None,
        "budget": entry.budget,
        "max_concurrent_streams": entry.max_concurrent_streams,
        "secrets": sum(1 for d in entry.digests if d.not_after is None or d.not_after > now),
        "rotation_ends": min(
            (d.not_after.isoformat() for d in entry.digests if d.not_after and d.not_after > now),
            default=None,
        ),
    }


def _admin(args: argparse.Namespace) -> tuple[KeyAdmin, AuditLog]:
    router = load_suite(args.config).router
    store = Path(args.store) if args.store else router.keys.store_path
    if store is None:
        raise KeysError("no key store: set router.keys.store_path in the config, or --store")
    if args.secret:
        secret = Path(args.secret)
    elif args.store:
        secret = store.with_name(store.name + ".secret")
    else:
        secret = router.keys.secret_file() or store.with_name(store.name + ".secret")
    audit = AuditLog(router.audit, "keys")
    ids = frozenset(key.id for key in router.api_keys)
    return KeyAdmin(store, secret, audit, ids), audit


def _run(args: argparse.Namespace) -> int:
    try:
        admin, audit = _admin(args)
    except (KeysError, OSError) as err:
        print(f"sluice keys: {err}", file=sys.stderr)
        return 1
    try:
        return _act(admin, args)
    except (KeysError, KeyStoreError, ValueError) as err:
        print(f"sluice keys: {err}", file=sys.stderr)
        if args.keys_command != "list":
            target = getattr(args, "key_id", None) or getattr(args, "id", None) or ""
            admin.refused(f"key.{args.keys_command}", target, str(err))
        return 1
    finally:
        audit.close()


def _act(admin: KeyAdmin, args: argparse.Namespace) -> int:
    now = _now()
    if args.keys_command == "create":
        entry = KeyEntry(
            id=args.id or f"key-{secrets.token_hex(4)}",
            tenant=args.tenant,
            name=args.name,
            created=now,
            expires=now + args.expires if args.expires else None,
            models=args.model or ["*"],
            tier=args.tier,
            rate_limit=RateLimit(requests_per_minute=args.rpm) if args.rpm else None,
            budget=args.budget,
            max_concurrent_streams=args.max_streams,
            digests=[Digest(hmac="0" * 64, created=now)],  # replaced by create()
        )
        key = admin.create(entry)
        print(key)
        print(f"created key {entry.id} (tenant {entry.tenant}); the key above is shown once "
              "and cannot be recovered", file=sys.stderr)  # fmt: skip
    elif args.keys_command == "list":
        rows = [_describe(entry, now) for entry in admin.entries()]
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(f"{'ID':<20} {'TENANT':<14} {'STATE':<8} {'TIER':<10} {'EXPIRES':<26} NAME")
            for row in rows:
                print(
                    f"{row['id']!s:<20} {row['tenant']!s:<14} {row['state']!s:<8} "
                    f"{row['tier']!s:<10} {row['expires'] or '-'!s:<26} {row['name']}"
                )
    elif args.keys_command == "revoke":
        admin.revoke(args.key_id)
        print(f"revoked key {args.key_id}", file=sys.stderr)
    else:  # rotate
        key = admin.rotate(args.key_id, args.overlap)
        print(key)
        ends = (now + args.overlap).isoformat()
        print(f"rotated key {args.key_id}; the previous secret works until {ends}; the key "
              "above is shown once", file=sys.stderr)  # fmt: skip
    return 0


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
