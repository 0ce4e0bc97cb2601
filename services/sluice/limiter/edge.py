"""Envoy's rate limit service (RLS v3): edge limits by API key, by route and globally.

Envoy's `envoy.filters.http.ratelimit` filter calls `ShouldRateLimit` once per request
with the descriptors the launcher's route actions produce (see launcher/envoy/rate_limits.py):

- `generic_key=global` on every request, so one without an API key is still limited;
- `api_key=<presented key>` when `x-api-key` or `authorization: Bearer` is present;
- `route=<route name>` naming the matched route.

Each descriptor is checked against the edge policies of its scope, and every check of
the request goes to the backend in one atomic all-or-nothing call, exactly like
Acquire. The response carries one DescriptorStatus per descriptor (Envoy fills the
`x-ratelimit-*` headers from them), a `retry-after` header and our refusal message as
the body (Envoy's local reply config wraps it in the JSON error shape).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration
from prometheus_client import Counter

from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.types import ServicerContext
from sluice.limiter.algorithms import Verdict
from sluice.limiter.backend import Backend
from sluice.limiter.policies import Check, Policies, Subjects
from sluice.limiter.settings import EdgeSettings, Scope
from sluice.vendor.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

log = logging.getLogger("sluice.limiter.edge")

SERVICE_NAME = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name

# Descriptor entry keys Envoy sends → the policy scope they are checked against.
DESCRIPTOR_SCOPES: dict[str, Scope] = {
    "generic_key": "global",
    "api_key": "api_key",
    "route": "endpoint",
}
_OK = rls_pb2.RateLimitResponse.OK
_OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
_Unit = rls_pb2.RateLimitResponse.RateLimit
_UNITS = ((1.0, _Unit.SECOND), (60.0, _Unit.MINUTE), (3600.0, _Unit.HOUR), (86400.0, _Unit.DAY))


def key_subject(presented: str) -> str:
    """The API key's edge identity: 16 hex digits of the SHA-256 of the bare key.

    Accepts the raw `x-api-key` value or an `authorization` value (`Bearer <key>`).
    The key itself never reaches storage, metrics or logs.
    """
    scheme, _, credential = presented.strip().partition(" ")
    key = credential.strip() if scheme.lower() == "bearer" and credential.strip() else presented
    return hashlib.sha256(key.strip().encode()).hexdigest()[:16]


def _period_s(check: Check) -> float:
    limit, second = check.algorithm.params
    if check.algorithm.name == "token_bucket":
        return limit / second  # time to refill the whole bucket
    return second


def _unit(period_s: float) -> rls_pb2.RateLimitResponse.RateLimit.Unit:
    for seconds, unit in _UNITS:
        if math.isclose(period_s, seconds):
            return unit
    return _Unit.SECOND


def _duration(seconds: float) -> Duration:
    whole = max(0.0, seconds)
    return Duration(seconds=int(whole), nanos=int((whole - int(whole)) * 1e9))


@dataclass(slots=True)
class _Descriptor:
    scope: Scope | None
    checks: list[Check]


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """Answers Envoy's ShouldRateLimit from the edge policies."""

    def __init__(self, settings: EdgeSettings, backend: Backend, host: ServiceHost) -> None:
        self._domain = settings.domain
        self._by_scope: dict[Scope, Policies] = {
            scope: Policies([p for p in settings.policies if p.scope == scope])
            for scope in set(DESCRIPTOR_SCOPES.values())
        }
        self._backend = backend
        decisions = Counter(
            "sluice_limiter_edge_decisions",
            "Envoy rate limit (RLS) decisions per edge policy by result (allowed, denied).",
            ["policy", "result"],
            registry=host.registry,
        )
        self._allowed = {p.name: decisions.labels(p.name, "allowed") for p in settings.policies}
        self._denied = {p.name: decisions.labels(p.name, "denied") for p in settings.policies}
        self._unknown = Counter(
            "sluice_limiter_edge_unknown_descriptors",
            "RLS descriptors with no known key (answered OK, not limited).",
            registry=host.registry,
        )

    def _subjects(self, request: rls_pb2.RateLimitRequest) -> Subjects:
        api_key = endpoint = ""
        for descriptor in request.descriptors:
            for entry in descriptor.entries:
                if entry.key == "api_key" and entry.value and not api_key:
                    api_key = key_subject(entry.value)
                elif entry.key == "route" and entry.value and not endpoint:
                    endpoint = entry.value
        return Subjects(api_key=api_key, endpoint=endpoint)

    def _descriptors(self, request: rls_pb2.RateLimitRequest) -> list[_Descriptor]:
        subjects = self._subjects(request)
        hits = float(request.hits_addend or 1)
        found: list[_Descriptor] = []
        seen: set[str] = set()
        for descriptor in request.descriptors:
            keys = [e.key for e in descriptor.entries]
            scope = DESCRIPTOR_SCOPES.get(keys[0]) if len(keys) == 1 else None
            if scope is None:
                self._unknown.inc()
                found.append(_Descriptor(None, []))
                continue
            checks = self._by_scope[scope].checks(subjects, hits, 0.0)
            # The same subject twice (x-api-key and authorization both sent) counts once.
            fresh = [c for c in checks if c.key not in seen]
            seen.update(c.key for c in checks)
            found.append(_Descriptor(scope, fresh))
        return found

    async def ShouldRateLimit(  # noqa: N802 - gRPC method name
        self, request: rls_pb2.RateLimitRequest, context: ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        if request.domain != self._domain:
            return rls_pb2.RateLimitResponse(overall_code=_OK)
        descriptors = self._descriptors(request)
        checks = [c for d in descriptors for c in d.checks]
        if not checks:
            return rls_pb2.RateLimitResponse(
                overall_code=_OK,
                statuses=[rls_pb2.RateLimitResponse.DescriptorStatus(code=_OK)] * len(descriptors),
            )
        outcome = await self._backend.acquire(checks, os.urandom(8).hex())
        verdicts = iter(outcome.verdicts)
        response = rls_pb2.RateLimitResponse(overall_code=_OK if outcome.allowed else _OVER)
        refused: list[tuple[Check, Verdict]] = []
        for descriptor in descriptors:
            pairs = [(check, next(verdicts)) for check in descriptor.checks]
            response.statuses.append(self._status(pairs, consumed=outcome.allowed))
            for check, verdict in pairs:
                if verdict.allowed:
                    if outcome.allowed:
                        self._allowed[check.policy].inc()
                else:
                    self._denied[check.policy].inc()
                    refused.append((check, verdict))
        if not outcome.allowed:
            self._explain(response, refused)
        return response

    @staticmethod
    def _status(
        pairs: Sequence[tuple[Check, Verdict]], *, consumed: bool
    ) -> rls_pb2.RateLimitResponse.DescriptorStatus:
        status = rls_pb2.RateLimitResponse.DescriptorStatus(code=_OK)
        if not pairs:
            return status
        # The tightest limit speaks for the descriptor: a refusing one, else the one
        # with the fewest units left.
        check, verdict = min(pairs, key=lambda p: (p[1].allowed, p[1].remaining))
        status.code = _OK if verdict.allowed else _OVER
        status.current_limit.CopyFrom(
            rls_pb2.RateLimitResponse.RateLimit(
                requests_per_unit=int(verdict.limit),
                unit=_unit(_period_s(check)),
                name=check.policy,
            )
        )
        # A refused request consumed nothing: a passing limit still has its cost left.
        left = (
            verdict.remaining if consumed or not verdict.allowed else verdict.remaining + check.cost
        )
        status.limit_remaining = int(min(left, verdict.limit))
        wait = verdict.reset_after_s if verdict.allowed else verdict.retry_after_s
        status.duration_until_reset.CopyFrom(
            _duration(verdict.reset_after_s if math.isinf(wait) else wait)
        )
        return status

    @staticmethod
    def _explain(
        response: rls_pb2.RateLimitResponse, refused: Sequence[tuple[Check, Verdict]]
    ) -> None:
        if not refused:
            return
        check, verdict = refused[0]
        waits = [v.retry_after_s for _, v in refused]
        message = (
            f"request limit of {verdict.limit:g} for {check.subject} exceeded at the edge "
            f"(policy {check.policy})"
        )
        response.raw_body = message.encode()
        response.response_headers_to_add.append(
            rls_pb2.HeaderValue(key="x-sluice-policy", value=check.policy)
        )
        if not any(math.isinf(w) for w in waits):
            response.response_headers_to_add.append(
                rls_pb2.HeaderValue(key="retry-after", value=str(max(1, math.ceil(max(waits)))))
            )
        log.info("edge refusal: %s", message)
