"""What `sluice keys create|list|revoke|rotate` does (its arguments: launcher/keys.py): the
actions on the key store and its secret, each written to the audit log."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import getpass
import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from sluice.core.audit import AdminRecord, AuditLog
from sluice.launcher.settings import load_suite
from sluice.router.keystore import (
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


class KeysError(Exception):
    """A refused `sluice keys` action (the message says why)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


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


def run(args: argparse.Namespace) -> int:
    """The `sluice keys` command, once parsed (launcher/keys.py)."""
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
