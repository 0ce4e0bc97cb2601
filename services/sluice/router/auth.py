"""API-key authentication from two sources: `router.api_keys` (SHA-256 digests, compared
in constant time) and the key store managed by `sluice keys` (HMAC-SHA256 digests,
expiry, revocation and rotation; router/keystore.py). The public development key is
accepted only in dev mode (`router.dev_mode`, `sluice up --dev`)."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sluice.core.errors import AuthenticationError
from sluice.router.keystore import KeyEntry, KeyStoreReader
from sluice.router.settings import DEV_KEY_SHA256, ApiKeySettings
from sluice.router.settings.keys import StreamCapSettings

log = logging.getLogger("sluice.router.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, tenant, tier, allowed models and its own caps."""

    key_id: str
    tenant: str
    tier: str
    models: frozenset[str]
    max_streams: int = StreamCapSettings().max_concurrent_streams
    """Streams the key may hold open at once (router/stream_caps.py)."""
    budget: float | None = None
    """The key's own budget per period; None: router.budgets decides."""
    requests_per_minute: int | None = None
    """The key's own request rate (router/stream_caps.py); None: none of its own."""

    def may_use(self, model: str) -> bool:
        """Whether the key may call the model alias."""
        return "*" in self.models or model in self.models


def _text(value: str | bytes) -> str:
    """A header value as text. Not UTF-8 (bytes from gRPC, or a str holding the lone
    surrogates an HTTP server decodes undecodable bytes into): a 401 like any wrong key,
    never a 500."""
    try:
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        return raw.decode("utf-8")
    except UnicodeError as err:
        raise AuthenticationError(
            "invalid API key: not UTF-8 text", metadata={"cause": "malformed_key"}
        ) from err


def _presented_key(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = _text(value)
            scheme, _, credential = text.partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
            return None
        if key == "x-api-key":
            return _text(value)
    return None


def _cap(streams: StreamCapSettings, tier: str, own: int | None) -> int:
    if own is not None:
        return own
    return streams.per_tier.get(tier, streams.max_concurrent_streams)


class ApiKeyAuthenticator:
    """Resolves the key in request metadata to a Principal."""

    def __init__(
        self,
        keys: Sequence[ApiKeySettings],
        *,
        dev_mode: bool = False,
        store: KeyStoreReader | None = None,
        streams: StreamCapSettings | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._streams = streams or StreamCapSettings()
        self._store = store
        self._wall = wall
        if not dev_mode and any(key.sha256 == DEV_KEY_SHA256 for key in keys):
            log.warning(
                "router.api_keys holds the public development key sk-sluice-dev; it is "
                "refused unless router.dev_mode is on (sluice up --dev)"
            )
        self._keys = [
            (
                bytes.fromhex(key.sha256),
                Principal(
                    key.id,
                    key.tenant,
                    key.tier,
                    frozenset(key.models),
                    max_streams=_cap(self._streams, key.tier, key.max_concurrent_streams),
                ),
            )
            for key in keys
            # Outside dev mode the public key matches nothing (a 401 like any unknown key).
            if dev_mode or key.sha256 != DEV_KEY_SHA256
        ]

    def _principal(self, entry: KeyEntry) -> Principal:
        return Principal(
            entry.id,
            entry.tenant,
            entry.tier,
            frozenset(entry.models),
            max_streams=_cap(self._streams, entry.tier, entry.max_concurrent_streams),
            budget=entry.budget,
            requests_per_minute=(
                entry.rate_limit.requests_per_minute if entry.rate_limit is not None else None
            ),
        )

    def _from_store(self, presented: str) -> Principal | None:
        if self._store is None:
            return None
        match = self._store.lookup(presented)
        if match is None:
            return None
        entry = match.entry
        now = datetime.datetime.fromtimestamp(self._wall(), datetime.UTC)
        if entry.state == "revoked":
            raise AuthenticationError(
                "API key revoked", metadata={"cause": "revoked_key", "key_id": entry.id}
            )
        if entry.expires is not None and now >= entry.expires:
            raise AuthenticationError(
                "API key expired", metadata={"cause": "expired_key", "key_id": entry.id}
            )
        if match.not_after is not None and now >= match.not_after:
            raise AuthenticationError(
                "API key expired: replaced by a rotation",
                metadata={"cause": "rotated_key", "key_id": entry.id},
            )
        return self._principal(entry)

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        """The caller's principal; AuthenticationError when the key is missing or unknown."""
        presented = _presented_key(metadata)
        if presented is None:
            raise AuthenticationError(
                "missing API key: send 'authorization: Bearer <key>' or 'x-api-key'",
                metadata={"cause": "missing_key"},
            )
        found = self._from_store(presented)
        if found is not None:
            return found
        digest = hashlib.sha256(presented.encode()).digest()
        # Compare against every key so timing does not reveal which digest prefix matched.
        for stored, principal in self._keys:
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise AuthenticationError("invalid API key", metadata={"cause": "unknown_key"})
        return found
