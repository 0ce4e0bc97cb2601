"""Configured policies: which limits a request falls under, and at what cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sluice.limiter.algorithms import Algorithm, make_algorithm
from sluice.limiter.settings import LimitSettings, PolicySettings, Scope, Unit


@dataclass(frozen=True, slots=True)
class Subjects:
    """The fields of a request that policies key on."""

    api_key: str
    tenant: str = ""
    user: str = ""
    endpoint: str = ""
    model: str = ""

    def value(self, scope: Scope) -> str:
        """The request's value for a scope ('*' for global; '' when absent)."""
        if scope == "global":
            return "*"
        field = "api_key" if scope == "api_key" else scope
        value: str = getattr(self, field)
        return value


@dataclass(frozen=True, slots=True)
class Check:
    """One limit a request must pass: the policy, whose usage, the algorithm, the cost."""

    policy: str
    subject: str
    """`scope:value`, as reported in QuotaFailure."""
    key: str
    """Storage key of the subject's state under this policy."""
    unit: Unit
    algorithm: Algorithm
    cost: float


def _algorithm(policy: PolicySettings, limit: LimitSettings) -> Algorithm:
    if policy.algorithm == "token_bucket":
        return make_algorithm("token_bucket", limit.limit, limit.rate())
    return make_algorithm(policy.algorithm, limit.limit, limit.window_s)


@dataclass(frozen=True, slots=True)
class _Policy:
    settings: PolicySettings
    algorithm: Algorithm
    overrides: dict[str, Algorithm]


class Policies:
    """The compiled policy set; `checks` is the per-request hot path."""

    def __init__(self, policies: Sequence[PolicySettings]) -> None:
        self._policies = [
            _Policy(
                settings=p,
                algorithm=_algorithm(p, p),
                overrides={subject: _algorithm(p, o) for subject, o in p.overrides.items()},
            )
            for p in policies
        ]

    @property
    def names(self) -> list[str]:
        """Policy names, in configuration order."""
        return [p.settings.name for p in self._policies]

    def checks(self, subjects: Subjects, requests: float, tokens: float) -> list[Check]:
        """Every limit that applies to a request costing `requests` and `tokens`."""
        found: list[Check] = []
        for policy in self._policies:
            config = policy.settings
            value = subjects.value(config.scope)
            if not value:
                continue
            if any(subjects.value(field) not in allowed for field, allowed in config.match.items()):
                continue
            cost = requests if config.unit == "requests" else tokens
            found.append(
                Check(
                    policy=config.name,
                    subject=f"{config.scope}:{value}",
                    key=f"{config.name}|{value}",
                    unit=config.unit,
                    algorithm=policy.overrides.get(value, policy.algorithm),
                    cost=cost,
                )
            )
        return found
