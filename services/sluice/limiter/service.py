"""LimiterService servicer and the limiter's build_server."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sequence

from grpc_health.v1 import health_pb2
from prometheus_client import Counter, Gauge, Histogram

from sluice.core.clock import Clock, SystemClock
from sluice.core.errors import (
    BusinessRuleViolationError,
    FieldViolation,
    MissingParameterError,
    QuotaExceededError,
    QuotaViolation,
    ValidationError,
)
from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.types import ServicerContext
from sluice.core.telemetry.spans import RequestSpans
from sluice.limiter.algorithms import LEASABLE, LeaseAsk, Verdict
from sluice.limiter.backend import Backend
from sluice.limiter.edge import SERVICE_NAME as RLS_SERVICE_NAME
from sluice.limiter.edge import RateLimitServicer
from sluice.limiter.fallback import FallbackBackend
from sluice.limiter.memory import MemoryBackend
from sluice.limiter.policies import Check, Policies, Subjects
from sluice.limiter.redis import RedisBackend
from sluice.limiter.settings import LeaseSettings, LimiterSettings
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc
from sluice.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc

LIMITER_SERVICE = limiter_pb2.DESCRIPTOR.services_by_name["LimiterService"].full_name
STORE_HEALTH = f"{LIMITER_SERVICE}.store"
"""Health name of the shared store: NOT_SERVING while decisions fall back to the local
share (the limiter itself stays SERVING: it still decides)."""


def _describe(check: Check) -> str:
    limit, second = check.algorithm.params
    name = check.algorithm.name
    if name == "fixed_window":
        per = f"per {second:g} s window"
    elif name == "sliding_log":
        per = f"in any {second:g} s"
    elif name == "sliding_counter":
        per = f"in any {second:g} s (estimated)"
    else:
        per = "in a burst"
    return f"policy {check.policy}: at most {limit:g} {check.unit} {per}"


def _refusal(
    checks: Sequence[Check], verdicts: Sequence[Verdict], local_fallback: bool = False
) -> QuotaExceededError:
    refused = [(c, v) for c, v in zip(checks, verdicts, strict=True) if not v.allowed]
    first, first_verdict = refused[0]
    waits = [v.retry_after_s for _, v in refused]
    # Admission needs every refusing limit to have room again: the longest wait.
    retry = None if any(math.isinf(w) for w in waits) else max(waits)
    return QuotaExceededError(
        f"{first.unit} limit of {first_verdict.limit:g} for {first.subject} exceeded "
        f"(policy {first.policy})",
        metadata={
            "policy": first.policy,
            "limit": f"{first_verdict.limit:g}",
            "policies": ",".join(c.policy for c, _ in refused),
            **({"fallback": "local_share"} if local_fallback else {}),
        },
        retry_after_s=retry,
        quota_violations=[
            QuotaViolation(subject=c.subject, description=_describe(c)) for c, _ in refused
        ],
    )


def _check_period(period_s: float, field: str) -> None:
    if not (period_s > 0 and math.isfinite(period_s)):
        raise ValidationError(
            f"{field} must be a positive number of seconds",
            field_violations=[FieldViolation(field, "must be positive")],
        )


class LimiterServicer(limiter_pb2_grpc.LimiterServiceServicer):
    """Admits requests against every configured policy that matches them, atomically."""

    def __init__(
        self,
        policies: Policies,
        backend: Backend,
        host: ServiceHost,
        lease: LeaseSettings | None = None,
    ) -> None:
        self._policies = policies
        self._backend = backend
        self._lease = lease or LeaseSettings()
        self._leases = Counter(
            "sluice_limiter_leases",
            "Leases granted (request permits taken in advance along with an Acquire).",
            registry=host.registry,
        )
        self._leased_requests = Counter(
            "sluice_limiter_leased_requests",
            "Request permits granted in leases.",
            registry=host.registry,
        )
        decisions = Counter(
            "sluice_limiter_decisions",
            "Admission decisions per policy by result (allowed, denied).",
            ["policy", "result"],
            registry=host.registry,
        )
        self._allowed = {name: decisions.labels(name, "allowed") for name in policies.names}
        self._denied = {name: decisions.labels(name, "denied") for name in policies.names}
        self._latency = Histogram(
            "sluice_limiter_decision_seconds",
            "Time to decide one Acquire in the backend.",
            ["backend"],
            registry=host.registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0),
        ).labels(backend.name)
        reconciled = Counter(
            "sluice_limiter_reconciliations",
            "Reconcile calls by result (applied, unknown).",
            ["result"],
            registry=host.registry,
        )
        self._applied = reconciled.labels("applied")
        self._unknown = reconciled.labels("unknown")
        self._spent = Counter(
            "sluice_limiter_spend",
            "Currency added to API keys' budget spend (Spend calls).",
            registry=host.registry,
        )
        self._budget_refusals = Counter(
            "sluice_limiter_budget_refusals",
            "Acquires refused because the key's budget for the period is spent.",
            registry=host.registry,
        )
        self._reconciled_tokens = Counter(
            "sluice_limiter_reconciled_tokens",
            "Tokens charged (positive) or refunded (negative) by reconciliation, by direction.",
            ["direction"],
            registry=host.registry,
        )

    async def Acquire(  # noqa: N802 - gRPC method name
        self, request: limiter_pb2.AcquireRequest, context: ServicerContext
    ) -> limiter_pb2.AcquireResponse:
        if not request.api_key_id:
            raise MissingParameterError(
                "api_key_id is required",
                field_violations=[FieldViolation("api_key_id", "must not be empty")],
            )
        negative = [
            FieldViolation(name, "must not be negative")
            for name, value in (("requests", request.requests), ("tokens", request.tokens))
            if value < 0
        ]
        if negative:
            raise ValidationError(
                "request and token counts must not be negative", field_violations=negative
            )
        subjects = Subjects(
            api_key=request.api_key_id,
            tenant=request.tenant,
            user=request.user,
            endpoint=request.endpoint,
            model=request.model,
        )
        spent = 0.0
        if request.lease_requests < 0:
            raise ValidationError(
                "lease_requests must not be negative",
                field_violations=[FieldViolation("lease_requests", "must not be negative")],
            )
        if request.HasField("budget"):
            spent = await self._check_budget(request.api_key_id, request.budget)
        checks = self._policies.checks(subjects, float(request.requests or 1), request.tokens)
        reservation_id = os.urandom(8).hex()
        if not checks:
            # No policy applies: admitted, and nothing to remember (limit 0 = unlimited).
            return limiter_pb2.AcquireResponse(reservation_id=reservation_id, spent=spent)
        started = time.perf_counter()
        lease = self._lease_ask(request, checks)
        outcome = await self._backend.acquire(checks, reservation_id, lease)
        self._latency.observe(time.perf_counter() - started)
        if not outcome.allowed:
            for check, verdict in zip(checks, outcome.verdicts, strict=True):
                if not verdict.allowed:
                    self._denied[check.policy].inc()
            raise _refusal(checks, outcome.verdicts, outcome.local_fallback)
        statuses = []
        for check, verdict in zip(checks, outcome.verdicts, strict=True):
            self._allowed[check.policy].inc()
            statuses.append(
                limiter_pb2.PolicyStatus(
                    policy=check.policy,
                    subject=check.subject,
                    unit=check.unit,
                    remaining=int(verdict.remaining),
                    limit=int(verdict.limit),
                    reset_after_ms=int(verdict.reset_after_s * 1000),
                )
            )
        response = limiter_pb2.AcquireResponse(
            reservation_id=reservation_id,
            policies=statuses,
            local_fallback=outcome.local_fallback,
            spent=spent,
        )
        if outcome.lease is not None:
            self._leases.inc()
            self._leased_requests.inc(outcome.lease.requests)
            response.lease.requests = outcome.lease.requests
            response.lease.ttl_ms = round(outcome.lease.ttl_s * 1000)
        # The headline figures come from the tightest request limit (any limit if none).
        candidates = [s for s in statuses if s.unit == "requests"] or statuses
        if candidates:
            tightest = min(candidates, key=lambda s: s.remaining)
            response.remaining = tightest.remaining
            response.limit = tightest.limit
            response.reset_after_ms = tightest.reset_after_ms
        return response

    def _lease_ask(
        self, request: limiter_pb2.AcquireRequest, checks: Sequence[Check]
    ) -> LeaseAsk | None:
        """The most a lease may be for this request; None when it may have none.

        Only request limits of algorithms that keep their promise under leases, and no
        budget (a budget is checked per request, against spend a lease cannot foresee).
        The backend then sizes it by headroom and refuses it on the local fallback share.
        """
        settings = self._lease
        wanted = min(request.lease_requests, settings.max_requests)
        if wanted < 1 or not settings.enabled or request.HasField("budget"):
            return None
        for check in checks:
            if check.unit != "requests" or check.algorithm.name not in LEASABLE:
                return None
        return LeaseAsk(wanted, settings.ttl_s, settings.min_headroom)

    async def _check_budget(self, api_key_id: str, budget: limiter_pb2.Budget) -> float:
        """The key's spend in the period; BUSINESS_RULE_VIOLATION once it reached the budget."""
        _check_period(budget.period_s, "budget.period_s")
        if budget.limit < 0 or not math.isfinite(budget.limit):
            raise ValidationError(
                "budget.limit must be a non-negative number",
                field_violations=[FieldViolation("budget.limit", "must not be negative")],
            )
        spent = await self._backend.spent(api_key_id, budget.period_s)
        if spent.amount >= budget.limit:
            self._budget_refusals.inc()
            currency = budget.currency or "currency units"
            raise BusinessRuleViolationError(
                f"the API key's budget of {budget.limit:g} {currency} for this period is spent",
                metadata={
                    "budget": f"{budget.limit:g}",
                    "spent": f"{spent.amount:.6g}",
                    "currency": budget.currency,
                },
                retry_after_s=spent.period_left_s,
            )
        return spent.amount

    async def Spend(  # noqa: N802 - gRPC method name
        self, request: limiter_pb2.SpendRequest, context: ServicerContext
    ) -> limiter_pb2.SpendResponse:
        if not request.api_key_id:
            raise MissingParameterError(
                "api_key_id is required",
                field_violations=[FieldViolation("api_key_id", "must not be empty")],
            )
        _check_period(request.period_s, "period_s")
        if request.amount < 0 or not math.isfinite(request.amount):
            raise ValidationError(
                "amount must be a non-negative number",
                field_violations=[FieldViolation("amount", "must not be negative")],
            )
        total = await self._backend.spend(request.api_key_id, request.period_s, request.amount)
        self._spent.inc(request.amount)
        return limiter_pb2.SpendResponse(spent=total)

    async def Reconcile(  # noqa: N802 - gRPC method name
        self, request: limiter_pb2.ReconcileRequest, context: ServicerContext
    ) -> limiter_pb2.ReconcileResponse:
        if not request.reservation_id:
            raise MissingParameterError(
                "reservation_id is required",
                field_violations=[FieldViolation("reservation_id", "must not be empty")],
            )
        if request.actual_tokens < 0:
            raise ValidationError(
                "actual_tokens must not be negative",
                field_violations=[FieldViolation("actual_tokens", "must not be negative")],
            )
        settled = await self._backend.reconcile(request.reservation_id, request.actual_tokens)
        if not settled.applied:
            self._unknown.inc()
            return limiter_pb2.ReconcileResponse(applied=False)
        self._applied.inc()
        delta = request.actual_tokens - int(settled.reserved_tokens)
        if delta:
            self._reconciled_tokens.labels("charged" if delta > 0 else "refunded").inc(abs(delta))
        return limiter_pb2.ReconcileResponse(
            applied=True, reserved_tokens=int(settled.reserved_tokens), delta_tokens=delta
        )


def build_backend(settings: LimiterSettings, clock: Clock | None, host: ServiceHost) -> Backend:
    """The configured backend; Redis comes wrapped in the local-share fallback."""
    local = MemoryBackend(
        clock or SystemClock(),
        max_keys=settings.max_tracked_keys,
        reservation_ttl_s=settings.reservation_ttl_s,
        max_bytes=settings.max_tracked_bytes,
    )
    memory_bound = Gauge(
        "sluice_limiter_memory_bound_bytes",
        "Most bytes the in-memory limit states, reservations and spend may hold.",
        registry=host.registry,
    )
    memory_bound.set(local.max_bytes)
    Gauge(
        "sluice_limiter_memory_used_bytes",
        "Estimated bytes the in-memory limit states, reservations and spend hold now.",
        registry=host.registry,
    ).set_function(lambda: local.bytes_used)
    if settings.backend == "memory":
        return local
    degraded = Gauge(
        "sluice_limiter_degraded",
        "1 while the shared store is unreachable and each replica enforces its local share.",
        registry=host.registry,
    )
    switches = Counter(
        "sluice_limiter_fallbacks",
        "Times the limiter switched to local decisions because the store was unreachable.",
        registry=host.registry,
    )

    health_updates: set[asyncio.Task[None]] = set()

    def announce(is_degraded: bool) -> None:
        degraded.set(1 if is_degraded else 0)
        if is_degraded:
            switches.inc()
        # Health setters are coroutines; this runs inside a decision: set it soon, in order.
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if is_degraded
            else health_pb2.HealthCheckResponse.SERVING
        )
        task = asyncio.get_running_loop().create_task(host.health.set(STORE_HEALTH, status))
        health_updates.add(task)
        task.add_done_callback(health_updates.discard)

    tracer = host.tracer_provider.get_tracer("sluice.limiter") if host.tracing_active else None
    shared = RedisBackend(
        settings.redis,
        clock=clock,
        reservation_ttl_s=settings.reservation_ttl_s,
        spans=RequestSpans(tracer),
    )
    fallback = FallbackBackend(
        shared,
        local,
        clock=clock or SystemClock(),
        replicas=settings.redis.replicas,
        retry_interval_s=settings.redis.retry_interval_s,
        on_change=announce,
        ping=shared.ping,
    )

    async def start() -> None:
        await host.health.set(STORE_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        await fallback.start()

    host.add_startup(start)
    return fallback


def build_server(
    settings: LimiterSettings, *, clock: Clock | None = None, backend: Backend | None = None
) -> ServiceHost:
    """Wire the limiter service. Call ``await host.start()`` to bind and serve.

    With `clock` given, every backend (Redis included) takes `now` from it; otherwise
    the Redis backend uses the server's clock, shared by all replicas.
    """
    host = ServiceHost("limiter", settings)
    chosen = backend or build_backend(settings, clock, host)
    host.add_cleanup(chosen.close)
    limiter_pb2_grpc.add_LimiterServiceServicer_to_server(
        LimiterServicer(Policies(settings.effective_policies()), chosen, host, settings.lease),
        host.server,
    )
    host.add_service(LIMITER_SERVICE)
    # Envoy's rate limit service, over the same backend (edge limits).
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
        RateLimitServicer(settings.edge, chosen, host), host.server
    )
    host.add_service(RLS_SERVICE_NAME)
    return host
