"""Policies: which limits a request falls under, and settings validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluice.limiter.algorithms import FixedWindow, SlidingLog, TokenBucket
from sluice.limiter.policies import Policies, Subjects
from sluice.limiter.settings import LimiterSettings, PolicySettings


def policy(**fields: object) -> PolicySettings:
    return PolicySettings.model_validate({"limit": 10, **fields})


REQUEST = Subjects(api_key="k1", tenant="acme", user="u7", endpoint="/gen", model="gpt")


def test_each_scope_keys_on_its_own_field() -> None:
    policies = Policies(
        [
            policy(name="g", scope="global"),
            policy(name="u", scope="user"),
            policy(name="k", scope="api_key"),
            policy(name="t", scope="tenant"),
            policy(name="e", scope="endpoint"),
            policy(name="m", scope="model"),
        ]
    )

    checks = policies.checks(REQUEST, 1, 0)

    assert [(c.policy, c.subject, c.key) for c in checks] == [
        ("g", "global:*", "g|*"),
        ("u", "user:u7", "u|u7"),
        ("k", "api_key:k1", "k|k1"),
        ("t", "tenant:acme", "t|acme"),
        ("e", "endpoint:/gen", "e|/gen"),
        ("m", "model:gpt", "m|gpt"),
    ]


def test_a_request_without_the_field_skips_that_policy_but_not_global() -> None:
    policies = Policies([policy(name="g", scope="global"), policy(name="u", scope="user")])

    checks = policies.checks(Subjects(api_key="k1"), 1, 0)

    assert [c.policy for c in checks] == ["g"]


def test_units_take_their_own_cost() -> None:
    policies = Policies(
        [policy(name="r", unit="requests"), policy(name="t", unit="tokens", limit=1000)]
    )

    checks = policies.checks(REQUEST, 1, 420)

    assert [(c.unit, c.cost) for c in checks] == [("requests", 1), ("tokens", 420)]


def test_match_restricts_a_policy_to_some_values() -> None:
    policies = Policies([policy(name="big", scope="api_key", match={"model": ["gpt", "o1"]})])

    assert [c.policy for c in policies.checks(REQUEST, 1, 0)] == ["big"]
    other = Subjects(api_key="k1", model="small")
    assert policies.checks(other, 1, 0) == []


def test_algorithms_and_overrides_are_compiled() -> None:
    policies = Policies(
        [
            policy(name="b", limit=10, window_s=2),  # bucket: rate = limit / window
            policy(name="f", algorithm="fixed_window", window_s=60),
            policy(
                name="l",
                algorithm="sliding_log",
                overrides={"k1": {"limit": 3, "window_s": 5}},
            ),
        ]
    )

    b, f, log = policies.checks(REQUEST, 1, 0)

    assert b.algorithm == TokenBucket(10, 5)
    assert f.algorithm == FixedWindow(10, 60)
    assert log.algorithm == SlidingLog(3, 5)
    assert policies.checks(Subjects(api_key="k2"), 1, 0)[2].algorithm == SlidingLog(10, 1)


def test_default_policy_is_the_per_key_bucket_with_overrides() -> None:
    settings = LimiterSettings.model_validate(
        {
            "per_key": {"capacity": 1000, "refill_per_second": 500},
            "key_overrides": {"vip": {"capacity": 5, "refill_per_second": 1}},
        }
    )
    policies = Policies(settings.effective_policies())

    [check] = policies.checks(Subjects(api_key="k"), 1, 99)
    [vip] = policies.checks(Subjects(api_key="vip"), 1, 99)

    assert (check.policy, check.unit, check.cost) == ("per_key", "requests", 1)
    assert check.algorithm == TokenBucket(1000, 500)
    assert vip.algorithm == TokenBucket(5, 1)


def test_configured_policies_replace_the_default() -> None:
    settings = LimiterSettings.model_validate(
        {"policies": [{"name": "g", "scope": "global", "limit": 5}]}
    )

    assert [p.name for p in settings.effective_policies()] == ["g"]


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"policies": [{"name": "a", "limit": 1}, {"name": "a", "limit": 2}]}, "duplicate"),
        ({"policies": [{"name": "a", "limit": 0}]}, "limit"),
        ({"policies": [{"name": "a b", "limit": 1}]}, "name"),
        ({"policies": [{"name": "a", "limit": 1, "scope": "planet"}]}, "scope"),
        ({"policies": [{"name": "a", "limit": 1, "algorithm": "leaky"}]}, "algorithm"),
        ({"policies": [{"name": "a", "limit": 1, "unit": "bytes"}]}, "unit"),
        ({"policies": [{"name": "a", "limit": 1, "window_s": -1}]}, "window_s"),
        ({"redis": {"replicas": 0}}, "replicas"),
        ({"backend": "memcached"}, "backend"),
    ],
)
def test_bad_policy_settings_fail_naming_the_field(
    fields: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        LimiterSettings.model_validate(fields)

    assert complaint in str(caught.value)
