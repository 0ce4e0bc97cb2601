"""Router settings validation: API keys, model aliases."""

from __future__ import annotations

import pydantic
import pytest

from sluice.core.config import ConfigError, load_settings
from sluice.router.settings import DEV_KEY_SHA256, ApiKeySettings, RouterSettings
from tests.support import sha256_hex


def router(**section: object) -> RouterSettings:
    return load_settings(RouterSettings, "router", data={"router": section})


def test_defaults_accept_the_dev_key_for_every_model() -> None:
    settings = router()

    assert [k.id for k in settings.api_keys] == ["dev"]
    assert settings.api_keys[0].sha256 == DEV_KEY_SHA256 == sha256_hex("sk-sluice-dev")
    assert settings.api_keys[0].models == ["*"]
    assert [b.backend for b in settings.models["default"].backends] == ["simulated"]


@pytest.mark.parametrize(
    "digest",
    ["", "abc", "g" * 64, sha256_hex("k")[:63], sha256_hex("k") + "0", "sk-plain-key"],
    ids=["empty", "short", "not-hex", "63-digits", "65-digits", "plain-key"],
)
def test_bad_sha256_is_rejected_naming_the_field(digest: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="64 hex digits"):
        ApiKeySettings(id="k", sha256=digest)

    with pytest.raises(ConfigError) as caught:
        router(api_keys=[{"id": "k", "sha256": digest}])
    assert "router.api_keys.0.sha256" in str(caught.value)


def test_sha256_is_normalised_to_lower_case() -> None:
    assert ApiKeySettings(id="k", sha256="AB" * 32).sha256 == "ab" * 32


def test_duplicate_key_ids_are_rejected() -> None:
    with pytest.raises(ConfigError, match="ids must be unique"):
        router(
            api_keys=[
                {"id": "same", "sha256": sha256_hex("one")},
                {"id": "same", "sha256": sha256_hex("two")},
            ]
        )


def test_distinct_key_ids_are_accepted() -> None:
    settings = router(
        api_keys=[
            {"id": "one", "sha256": sha256_hex("one"), "tier": "background"},
            {"id": "two", "sha256": sha256_hex("two"), "models": ["default"]},
        ]
    )

    assert [(k.id, k.tier) for k in settings.api_keys] == [("one", "background"), ("two", "normal")]


@pytest.mark.parametrize(
    ("key", "dotted"),
    [
        ({"id": "", "sha256": "a" * 64}, "router.api_keys.0.id"),
        ({"id": "has space", "sha256": "a" * 64}, "router.api_keys.0.id"),
        ({"id": "k", "sha256": "a" * 64, "tier": "gold"}, "router.api_keys.0.tier"),
        ({"id": "k", "sha256": "a" * 64, "secret": "x"}, "router.api_keys.0.secret"),
    ],
)
def test_bad_key_fields_are_named(key: dict[str, str], dotted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        router(api_keys=[key])

    assert dotted in str(caught.value)


def test_model_alias_needs_a_backend() -> None:
    with pytest.raises(ConfigError) as caught:
        router(models={"fast": {"backends": []}})

    assert "router.models.fast.backends" in str(caught.value)


def test_model_alias_default_max_tokens_is_bounded() -> None:
    with pytest.raises(ConfigError) as caught:
        router(models={"fast": {"backends": [{"backend": "b"}], "default_max_tokens": 0}})

    assert "router.models.fast.default_max_tokens" in str(caught.value)
