"""The key store: API keys managed by `sluice keys`, read by the router without a restart.

One JSON file (`router.keys.store_path`) holds every managed key's entry: id, tenant,
name, creation time, expiry, allowed models, tier, rate limit, budget, stream cap, state,
and the digests of its secrets. A secret is never stored: each digest is
HMAC-SHA256(server secret, key), the server secret being a 32-byte file created
owner-only on first use (`router.keys.secret_path`). Keys are 256-bit random, so a
keyed fast hash is enough (no salt or slow hash is needed against guessing) and a key
is found by its digest in one dictionary lookup; a stolen store without the secret
cannot be checked offline at all (docs/security.md).

Writers (`sluice keys`) replace the file atomically (a temporary file renamed over it),
so a reader sees the old store or the new one, never half of one. The router checks the
file's identity (inode, size, mtime) at most every `reload_interval_s` on the request
path and re-reads it when it changed: a revocation takes effect within that interval.

Rotation adds a digest and gives the old one an end (`not_after`): both secrets work
until then, so clients switch over with no failed request.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("sluice.router.keystore")

KEY_PREFIX = "sk-sluice-"
SECRET_BYTES = 32
STORE_VERSION = 1
KEY_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
Tier = Literal["premium", "critical", "normal", "background"]
State = Literal["active", "revoked"]


class KeyStoreError(Exception):
    """The store or its secret cannot be read or written (the message names the file)."""


class Digest(BaseModel):
    """One secret of a key, as its HMAC; a rotated-out secret has an end."""

    model_config = ConfigDict(extra="forbid")

    hmac: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hex HMAC-SHA256 of the secret under the server secret."""
    created: datetime.datetime
    """When the secret was issued."""
    not_after: datetime.datetime | None = None
    """When the secret stops working (set by rotation); None: while the key is active."""


class RateLimit(BaseModel):
    """The key's own request rate limit, enforced by the router (router/stream_caps.py)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int = Field(ge=1)
    """Requests the key may start per minute."""


class KeyEntry(BaseModel):
    """One managed API key."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=KEY_ID_PATTERN)
    """Stable, non-secret id (limits, logs, metrics, audit)."""
    tenant: str = Field("default", min_length=1, max_length=128)
    """Tenant that owns the key."""
    name: str = Field("", max_length=200)
    """What the key is for (free text for operators)."""
    created: datetime.datetime
    """When the key was created."""
    expires: datetime.datetime | None = None
    """When the key stops working; None: never."""
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Model aliases the key may use; "*" allows all."""
    tier: Tier = "normal"
    """Priority class of the key's requests."""
    rate_limit: RateLimit | None = None
    """The key's own request rate; None: only the limiter's policies apply."""
    budget: float | None = Field(None, ge=0.0)
    """Currency budget per budget period; None: router.budgets decides."""
    max_concurrent_streams: int | None = Field(None, ge=1)
    """Streams the key may hold open at once; None: by tier or router.streams."""
    state: State = "active"
    """`revoked` keys are refused (kept so the refusal can say why)."""
    revoked: datetime.datetime | None = None
    """When the key was revoked."""
    digests: list[Digest] = Field(min_length=1)
    """The key's secrets (two during a rotation's overlap)."""


class StoreFile(BaseModel):
    """The whole store file."""

    model_config = ConfigDict(extra="forbid")

    version: int = STORE_VERSION
    """Format version."""
    keys: list[KeyEntry] = Field(default_factory=list)
    """Every managed key, revoked ones included."""

    def find(self, key_id: str) -> KeyEntry | None:
        """The entry with this id."""
        return next((entry for entry in self.keys if entry.id == key_id), None)


def new_key() -> str:
    """A fresh API key: the prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def key_digest(secret: bytes, key: str) -> str:
    """The stored form of a key: hex HMAC-SHA256 under the server secret."""
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


def load_secret(path: Path, *, create: bool) -> bytes:
    """The server secret; created (owner-only, from the first byte) when absent and
    `create`. Raises KeyStoreError naming the file."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another writer made it first: read theirs
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(SECRET_BYTES))
    try:
        secret = path.read_bytes()
    except OSError as err:
        raise KeyStoreError(f"key store secret {path}: {err.strerror}") from err
    if len(secret) < SECRET_BYTES:
        raise KeyStoreError(f"key store secret {path}: shorter than {SECRET_BYTES} bytes")
    return secret


def read_store(path: Path) -> StoreFile:
    """The store at `path` (empty when there is no file yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return StoreFile()
    except OSError as err:
        raise KeyStoreError(f"key store {path}: {err.strerror}") from err
    try:
        store = StoreFile.model_validate_json(text)
    except ValidationError as err:
        problems = err.error_count()
        raise KeyStoreError(f"key store {path}: not a key store ({problems} errors)") from err
    if store.version != STORE_VERSION:
        raise KeyStoreError(f"key store {path}: version {store.version} is not {STORE_VERSION}")
    return store


def write_store(path: Path, store: StoreFile) -> None:
    """Replace the store atomically (owner-only): readers see the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(store.model_dump_json(indent=1))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@dataclass(frozen=True, slots=True)
class Match:
    """A presented key's entry, and when the matching secret stops working."""

    entry: KeyEntry
    not_after: datetime.datetime | None


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class KeyStoreReader:
    """The router's view of the store: digest -> entry, re-read when the file changes."""

    def __init__(
        self,
        store_path: Path,
        secret_path: Path,
        *,
        reload_interval_s: float,
        monotonic: Callable[[], float],
    ) -> None:
        self._store_path = store_path
        self._secret_path = secret_path
        self._interval = reload_interval_s
        self._monotonic = monotonic
        self._checked = float("-inf")
        self._identity: tuple[int, int, int] | None = None
        self._secret: bytes | None = None
        self._by_digest: dict[bytes, Match] = {}
        self.reloads = 0
        """Times the store was (re-)read: for tests and the log."""
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the store when its file changed (at most every reload interval)."""
        now = self._monotonic()
        if not force and now - self._checked < self._interval:
            return
        self._checked = now
        identity = _identity(self._store_path)
        if identity == self._identity and not force:
            return
        self._identity = identity
        if identity is None:
            self._by_digest = {}
            return
        try:
            if self._secret is None:
                self._secret = load_secret(self._secret_path, create=False)
            store = read_store(self._store_path)
        except KeyStoreError as err:
            # Fail closed: a store that cannot be read accepts no key (settings keys
            # still work), and the next change of the file is tried again.
            log.error("key store not loaded: %s", err)
            self._by_digest = {}
            return
        self._by_digest = {
            bytes.fromhex(digest.hmac): Match(entry, digest.not_after)
            for entry in store.keys
            for digest in entry.digests
        }
        self.reloads += 1

    def lookup(self, presented: str) -> Match | None:
        """The entry a presented key belongs to, or None."""
        self.refresh()
        if self._secret is None or not self._by_digest:
            return None
        digest = hmac.new(self._secret, presented.encode("utf-8"), hashlib.sha256).digest()
        # A dictionary lookup by a keyed digest: an attacker cannot choose digests, so the
        # lookup's timing tells nothing about stored keys.
        return self._by_digest.get(digest)
