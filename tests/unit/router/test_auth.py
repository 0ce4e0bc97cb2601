"""API-key authentication from request metadata."""

from __future__ import annotations

import pytest

from sluice.core.errors import AuthenticationError
from sluice.router.auth import ApiKeyAuthenticator
from sluice.router.settings import ApiKeySettings
from tests.support import sha256_hex

ALICE_KEY = "sk-alice-0123"
BOB_KEY = "sk-bob-4567"


@pytest.fixture
def authenticator() -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator(
        [
            ApiKeySettings(id="alice", sha256=sha256_hex(ALICE_KEY), tenant="acme", tier="premium"),
            ApiKeySettings(id="bob", sha256=sha256_hex(BOB_KEY), models=["default"]),
        ]
    )


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", f"Bearer {ALICE_KEY}")],
        [("authorization", f"bearer {ALICE_KEY}")],
        [("authorization", f"BEARER   {ALICE_KEY}  ")],
        [("authorization", f"Bearer {ALICE_KEY}".encode())],
        [("x-api-key", ALICE_KEY)],
        [("x-api-key", ALICE_KEY.encode())],
        [("user-agent", "grpc-python"), ("x-request-id", "r1"), ("x-api-key", ALICE_KEY)],
    ],
    ids=[
        "bearer",
        "lowercase",
        "uppercase-padded",
        "bearer-bytes",
        "x-api-key",
        "x-api-key-bytes",
        "among-others",
    ],
)
def test_known_key_resolves_to_its_principal(
    authenticator: ApiKeyAuthenticator, metadata: list[tuple[str, str | bytes]]
) -> None:
    principal = authenticator.authenticate(metadata)

    assert principal.key_id == "alice"
    assert principal.tenant == "acme"
    assert principal.tier == "premium"
    assert principal.may_use("anything")


def test_each_key_maps_to_its_own_principal(authenticator: ApiKeyAuthenticator) -> None:
    bob = authenticator.authenticate([("x-api-key", BOB_KEY)])

    assert bob.key_id == "bob"
    assert bob.tenant == "default"
    assert bob.may_use("default")
    assert not bob.may_use("other")


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("user-agent", "curl")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer    ")],
        [("authorization", f"Basic {ALICE_KEY}")],
        [("authorization", ALICE_KEY)],
    ],
    ids=[
        "nothing",
        "unrelated",
        "bearer-no-credential",
        "bearer-blank",
        "basic-scheme",
        "no-scheme",
    ],
)
def test_missing_or_non_bearer_credentials_are_rejected(
    authenticator: ApiKeyAuthenticator, metadata: list[tuple[str, str | bytes]]
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        authenticator.authenticate(metadata)

    assert caught.value.reason == "AUTHORIZATION_ERROR"
    assert caught.value.metadata == {"cause": "missing_key"}


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", "Bearer sk-wrong")],
        [("x-api-key", "sk-wrong")],
        [("x-api-key", ALICE_KEY + " ")],
        [("x-api-key", ALICE_KEY.upper())],
        # The stored digest is not itself a credential: keys are compared by sha256.
        [("x-api-key", sha256_hex(ALICE_KEY))],
        [("authorization", f"Bearer {sha256_hex(ALICE_KEY)}")],
    ],
    ids=[
        "bearer-wrong",
        "x-api-key-wrong",
        "trailing-space",
        "case-changed",
        "digest-as-key",
        "digest-as-bearer",
    ],
)
def test_wrong_keys_are_rejected(
    authenticator: ApiKeyAuthenticator, metadata: list[tuple[str, str | bytes]]
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        authenticator.authenticate(metadata)

    assert caught.value.metadata == {"cause": "unknown_key"}
    assert ALICE_KEY not in caught.value.message


def test_stored_digest_may_be_upper_case_hex() -> None:
    upper = ApiKeySettings(id="u", sha256=sha256_hex(ALICE_KEY).upper())

    assert ApiKeyAuthenticator([upper]).authenticate([("x-api-key", ALICE_KEY)]).key_id == "u"


def test_no_configured_keys_rejects_everyone() -> None:
    with pytest.raises(AuthenticationError):
        ApiKeyAuthenticator([]).authenticate([("x-api-key", ALICE_KEY)])


@pytest.mark.parametrize(
    "metadata",
    [
        [("x-api-key", b"sk-\xff\xfe")],
        [("authorization", b"Bearer sk-\xff")],
        [("x-api-key", "sk-\udcff")],  # how aiohttp hands over undecodable header bytes
        [("authorization", "Bearer sk-\udcff")],
    ],
    ids=["bytes-key", "bytes-bearer", "surrogate-key", "surrogate-bearer"],
)
def test_a_key_that_is_not_utf8_is_a_401_not_a_crash(
    authenticator: ApiKeyAuthenticator, metadata: list[tuple[str, str | bytes]]
) -> None:
    # Issue 16 item 3: a non-UTF-8 byte in x-api-key answered 500.
    with pytest.raises(AuthenticationError) as caught:
        authenticator.authenticate(metadata)
    assert caught.value.http_status == 401
    assert caught.value.metadata["cause"] == "malformed_key"
