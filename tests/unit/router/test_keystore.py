"""The key store (router/keystore.py) as the router's authenticator reads it: HMAC digests,
expiry, revocation, rotation overlap and reloading on change; the dev key only in dev mode."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from sluice.core.errors import AuthenticationError
from sluice.router.auth import ApiKeyAuthenticator
from sluice.router.keystore import (
    KEY_PREFIX,
    Digest,
    KeyEntry,
    KeyStoreReader,
    RateLimit,
    StoreFile,
    key_digest,
    load_secret,
    new_key,
    read_store,
    write_store,
)
from sluice.router.settings import DEV_KEY_SHA256, ApiKeySettings
from sluice.router.settings.keys import StreamCapSettings
from tests.support import FakeClock, sha256_hex

EPOCH = datetime.datetime.fromtimestamp(1_700_000_000.0, datetime.UTC)


class Store:
    """A store on disk with its secret, and a reader over it on a fake clock."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "keys.json"
        self.secret_path = tmp_path / "keys.json.secret"
        self.secret = load_secret(self.secret_path, create=True)
        self.clock = FakeClock(wall=EPOCH.timestamp())
        self.file = StoreFile()
        write_store(self.path, self.file)
        self.reader = KeyStoreReader(
            self.path, self.secret_path, reload_interval_s=1.0, monotonic=self.clock.monotonic
        )
        self.auth = ApiKeyAuthenticator(
            [], store=self.reader, streams=StreamCapSettings(), wall=self.clock.wall
        )

    def add(self, key_id: str, **fields: object) -> str:
        key = new_key()
        created = datetime.datetime.fromtimestamp(self.clock.wall(), datetime.UTC)
        digest = Digest(hmac=key_digest(self.secret, key), created=created)
        self.file.keys.append(
            KeyEntry.model_validate(
                {"id": key_id, "created": created, "digests": [digest], **fields}
            )
        )
        self.save()
        return key

    def save(self) -> None:
        write_store(self.path, self.file)
        self.clock.advance(1.0)  # past the reload interval

    def who(self, key: str) -> str:
        return self.auth.authenticate([("authorization", f"Bearer {key}")]).key_id

    def refusal(self, key: str) -> str:
        with pytest.raises(AuthenticationError) as caught:
            self.auth.authenticate([("x-api-key", key)])
        return caught.value.metadata["cause"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_the_store_holds_an_hmac_of_the_key_never_the_key(store: Store) -> None:
    key = store.add("alice", tenant="acme")
    text = store.path.read_text()
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43  # 256 bits
    assert key not in text
    assert key[len(KEY_PREFIX) :] not in text
    keyed = hmac.new(store.secret, key.encode(), hashlib.sha256).hexdigest()
    assert keyed in text
    # A plain SHA-256 (checkable offline without the secret) is not there.
    assert hashlib.sha256(key.encode()).hexdigest() not in text
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.secret_path).st_mode) == 0o600
    assert len(store.secret_path.read_bytes()) == 32


def test_a_stored_key_resolves_to_its_entry(store: Store) -> None:
    key = store.add(
        "alice",
        tenant="acme",
        tier="premium",
        models=["default"],
        budget=2.5,
        max_concurrent_streams=3,
        rate_limit=RateLimit(requests_per_minute=60),
    )
    principal = store.auth.authenticate([("x-api-key", key)])
    assert (principal.key_id, principal.tenant, principal.tier) == ("alice", "acme", "premium")
    assert principal.may_use("default") and not principal.may_use("other")
    assert (principal.budget, principal.max_streams, principal.requests_per_minute) == (2.5, 3, 60)


def test_the_tier_and_the_default_give_the_stream_cap(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.auth = ApiKeyAuthenticator(
        [ApiKeySettings(id="s", sha256=sha256_hex("sk-s"), tier="background")],
        store=store.reader,
        streams=StreamCapSettings(max_concurrent_streams=7, per_tier={"premium": 20}),
        wall=store.clock.wall,
    )
    premium = store.add("p", tier="premium")
    normal = store.add("n")
    assert store.auth.authenticate([("x-api-key", premium)]).max_streams == 20
    assert store.auth.authenticate([("x-api-key", normal)]).max_streams == 7
    assert store.auth.authenticate([("x-api-key", "sk-s")]).max_streams == 7


def test_an_expired_key_is_refused_with_its_cause(store: Store) -> None:
    key = store.add("short", expires=EPOCH + datetime.timedelta(seconds=60))
    assert store.who(key) == "short"
    store.clock.advance(58.9)
    assert store.who(key) == "short"
    store.clock.advance(0.2)
    assert store.refusal(key) == "expired_key"


def test_revocation_is_seen_after_the_reload_interval_without_a_restart(store: Store) -> None:
    key = store.add("alice")
    assert store.who(key) == "alice"
    reloads = store.reader.reloads
    store.file.keys[0].state = "revoked"
    write_store(store.path, store.file)
    store.clock.advance(0.5)  # within the interval: the file is not looked at yet
    assert store.who(key) == "alice"
    store.clock.advance(0.6)
    assert store.refusal(key) == "revoked_key"
    assert store.reader.reloads == reloads + 1
    # Unchanged file: looked at again, not re-read.
    store.clock.advance(5)
    assert store.refusal(key) == "revoked_key"
    assert store.reader.reloads == reloads + 1


def test_rotation_keeps_both_secrets_until_the_overlap_ends(store: Store) -> None:
    old = store.add("alice")
    new = new_key()
    now = datetime.datetime.fromtimestamp(store.clock.wall(), datetime.UTC)
    entry = store.file.keys[0]
    entry.digests[0].not_after = now + datetime.timedelta(seconds=30)
    entry.digests.append(Digest(hmac=key_digest(store.secret, new), created=now))
    store.save()
    assert store.who(old) == store.who(new) == "alice"
    store.clock.advance(28)
    assert store.who(old) == "alice"
    store.clock.advance(2)
    assert store.refusal(old) == "rotated_key"
    assert store.who(new) == "alice"


def test_a_store_that_cannot_be_read_accepts_no_key_but_settings_keys_work(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    store.auth = ApiKeyAuthenticator(
        [ApiKeySettings(id="cfg", sha256=sha256_hex("sk-cfg"))],
        store=store.reader,
        wall=store.clock.wall,
    )
    key = store.add("alice")
    assert store.who(key) == "alice"
    store.path.write_text("{not json")
    store.clock.advance(2)
    assert store.refusal(key) == "unknown_key"
    assert store.who("sk-cfg") == "cfg"
    # A missing store is an empty one; it is picked up once it appears.
    store.path.unlink()
    store.clock.advance(2)
    assert store.refusal(key) == "unknown_key"
    store.save()
    assert store.who(key) == "alice"


def test_the_store_file_round_trips(store: Store) -> None:
    store.add("a", expires=EPOCH + datetime.timedelta(days=1), models=["m1", "m2"])
    assert read_store(store.path) == store.file
    assert read_store(store.path.with_name("absent.json")) == StoreFile()


def test_a_store_written_with_another_secret_matches_nothing(store: Store, tmp_path: Path) -> None:
    other = load_secret(tmp_path / "other.secret", create=True)
    assert other != store.secret
    key = new_key()
    store.file.keys.append(
        KeyEntry(
            id="x", created=EPOCH, digests=[Digest(hmac=key_digest(other, key), created=EPOCH)]
        )
    )
    store.save()
    assert store.refusal(key) == "unknown_key"


def test_the_dev_key_is_accepted_only_in_dev_mode() -> None:
    keys = [ApiKeySettings(id="dev", sha256=DEV_KEY_SHA256)]
    metadata = [("authorization", "Bearer sk-sluice-dev")]
    assert ApiKeyAuthenticator(keys, dev_mode=True).authenticate(metadata).key_id == "dev"
    with pytest.raises(AuthenticationError) as caught:
        ApiKeyAuthenticator(keys).authenticate(metadata)
    assert caught.value.metadata["cause"] == "unknown_key"
