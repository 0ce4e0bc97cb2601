"""API-key authentication: keys are stored as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from sluice.core.errors import AuthenticationError
from sluice.router.settings import ApiKeySettings


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, tenant, tier and allowed models."""

    key_id: str
    tenant: str
    tier: str
    models: frozenset[str]

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


class ApiKeyAuthenticator:
    """Resolves the key in request metadata to a Principal."""

    def __init__(self, keys: Sequence[ApiKeySettings]) -> None:
        self._keys = [
            (
                bytes.fromhex(key.sha256),
                Principal(key.id, key.tenant, key.tier, frozenset(key.models)),
            )
            for key in keys
        ]

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        """The caller's principal; AuthenticationError when the key is missing or unknown."""
        presented = _presented_key(metadata)
        if presented is None:
            raise AuthenticationError(
                "missing API key: send 'authorization: Bearer <key>' or 'x-api-key'",
                metadata={"cause": "missing_key"},
            )
        digest = hashlib.sha256(presented.encode()).digest()
        found: Principal | None = None
        # Compare against every key so timing does not reveal which digest prefix matched.
        for stored, principal in self._keys:
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise AuthenticationError("invalid API key", metadata={"cause": "unknown_key"})
        return found
