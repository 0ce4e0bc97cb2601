"""The router's side of the limiter exchange: admit a request, settle its stream.

Admission asks the limiter (one Acquire per request, or none when a lease holds a
permit: router/leases.py), with the key's budget when it has one (router/budgets.py).
A limiter that cannot answer does not stop serving: the router's local approximate
limit stands in, or, fail-closed, a refusal (router/degradation.py; docs/resilience.md).

Settling, once the stream has ended however it ended: the token reservation is
reconciled with real usage and the cost is added to the key's shared spend. Both calls
run in the background; a failure is counted and logged, never shown to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from sluice.core.clock import Clock
from sluice.core.tokens import count_tokens
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc
from sluice.router import genai
from sluice.router.auth import Principal
from sluice.router.budgets import Budgets
from sluice.router.degradation import LIMITER_DEGRADED, LIMITER_LOCAL_SHARE, LocalLimits
from sluice.router.downstream import error_from_rpc
from sluice.router.leases import LeaseBook
from sluice.router.relay import StreamState
from sluice.router.validation import GenerationRequest

log = logging.getLogger("sluice.router.limits")

GENERATE = "/sluice.router.v1.RouterService/Generate"
"""The endpoint every generation is limited as (Complete, the OpenAI front and Converse
turns share Generate's limits)."""


class LimitMetrics:
    """Fail-open admissions, leased admissions, failed spends and reconciliations."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.limiter_fail_open = Counter(
            "sluice_router_limiter_fail_open",
            "Requests admitted without a limiter decision because the limiter failed.",
            registry=registry,
        )
        self.spend_failures = Counter(
            "sluice_router_spend_failures",
            "Finished streams whose cost could not be added to the shared budget spend.",
            registry=registry,
        )
        self.leased_admissions = Counter(
            "sluice_router_leased_admissions",
            "Requests admitted from permits the limiter leased in advance (no limiter call).",
            registry=registry,
        )
        self.reconcile_failures = Counter(
            "sluice_router_reconcile_failures",
            "Token reservations that could not be reconciled with real usage.",
            registry=registry,
        )


class Limits:
    """Admission by the limiter (with leases, budgets and fail-open) and settlement."""

    def __init__(
        self,
        limiter: limiter_pb2_grpc.LimiterServiceStub,
        *,
        budgets: Budgets,
        local_limits: LocalLimits,
        leases: LeaseBook,
        metrics: LimitMetrics,
        clock: Clock,
        timeout_s: float,
    ) -> None:
        self._limiter = limiter
        self._budgets = budgets
        self._local_limits = local_limits
        self._leases = leases
        self._metrics = metrics
        self._clock = clock
        self._timeout_s = timeout_s
        self._settling: set[asyncio.Task[None]] = set()

    async def admit(
        self,
        request: GenerationRequest,
        principal: Principal,
        max_tokens: int,
        state: StreamState,
    ) -> None:
        """Admit the request or raise the limiter's refusal (a typed SluiceError)."""
        budgets = self._budgets
        limit = budgets.budget(principal.key_id, principal.budget)
        budget = (
            None
            if limit is None
            else limiter_pb2.Budget(
                limit=limit, period_s=budgets.settings.period_s, currency=budgets.settings.currency
            )
        )
        leases = self._leases
        lease_key = (principal.key_id, principal.tenant, request.user, GENERATE, request.model)
        ask = 0
        if budget is None and leases.enabled:  # a budget is checked by every Acquire
            if leases.take(lease_key):
                self._metrics.leased_admissions.inc()
                genai.annotate_leased_admission()
                return
            ask = leases.ask_for(lease_key)
        prompt_tokens = sum(count_tokens(m.content) for m in request.messages)
        sent_at = self._clock.monotonic()
        try:
            admitted = await self._limiter.Acquire(
                limiter_pb2.AcquireRequest(
                    api_key_id=principal.key_id,
                    tenant=principal.tenant,
                    user=request.user,
                    endpoint=GENERATE,
                    model=request.model,
                    requests=1,
                    tokens=prompt_tokens + max_tokens,
                    budget=budget,
                    lease_requests=ask,
                ),
                timeout=self._timeout_s,
            )
            if ask:
                leases.granted(lease_key, admitted.lease.requests, admitted.lease.ttl_ms, sent_at)
                ask = 0
            # Only token limits hold a reservation; with none matched there is nothing to
            # reconcile and the hot path pays no second call.
            if any(policy.unit == "tokens" for policy in admitted.policies):
                state.hold_reservation(admitted.reservation_id, prompt_tokens)
            if admitted.local_fallback:
                state.degrade(LIMITER_LOCAL_SHARE)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise error_from_rpc(err, "limiter") from err
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                budgets.refused.inc()  # the key's budget is spent
                raise error_from_rpc(err, "limiter") from err
            # A broken limiter must not stop serving (docs/resilience.md): the router's
            # local approximate limit (or, fail-closed, a refusal) stands in.
            log.warning("limiter unavailable (%s); deciding locally", err.code().name)
            budgets.check(principal.key_id, principal.budget)  # this router's own count of spend
            await self._local_limits.admit(principal.key_id)
            self._metrics.limiter_fail_open.inc()
            state.degrade(LIMITER_DEGRADED)
        finally:
            if ask:  # the ask got no answer (failed or cancelled): the next one may ask
                leases.refused(lease_key)

    def settle(self, request: GenerationRequest, principal: Principal, state: StreamState) -> None:
        """After the stream: reconcile its reservation and record its cost (in `state`)."""
        if state.reservation_id:
            self._later(
                self._reconcile(
                    limiter_pb2.ReconcileRequest(
                        reservation_id=state.reservation_id, actual_tokens=state.actual_tokens()
                    )
                )
            )
        budgets = self._budgets
        usage = state.completed.usage if state.completed is not None else None
        cost = state.cost = budgets.charge(
            principal.key_id,
            request.model,
            usage.input_tokens
            if usage is not None
            else sum(count_tokens(m.content) for m in request.messages),
            usage.output_tokens if usage is not None else state.output_tokens,
        )
        if cost > 0 and budgets.budget(principal.key_id, principal.budget) is not None:
            # Only keys with a budget share their spend (one call per stream).
            self._later(
                self._spend(
                    limiter_pb2.SpendRequest(
                        api_key_id=principal.key_id, amount=cost, period_s=budgets.settings.period_s
                    )
                )
            )

    async def drain(self) -> None:
        """Wait for the spend and reconcile calls still in flight (at shutdown, before the
        limiter channel closes: a lost Spend is budget the limiter never counts). Each
        call has its own timeout, so this ends within about one of them."""
        pending = {task for task in self._settling if not task.done()}
        while pending:
            _, stuck = await asyncio.wait(pending, timeout=self._timeout_s + 1.0)
            if stuck:
                return  # past their own timeout: do not hold the shutdown
            pending = {task for task in self._settling if not task.done()}

    def _later(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(call)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _spend(self, request: limiter_pb2.SpendRequest) -> None:
        try:
            await self._limiter.Spend(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            # Only this router's local count has it now (used while the limiter is away).
            self._metrics.spend_failures.inc()
            log.warning("budget spend not recorded in the limiter (%s)", err.code().name)

    async def _reconcile(self, request: limiter_pb2.ReconcileRequest) -> None:
        try:
            await self._limiter.Reconcile(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            # The reservation expires on its own; the limit is only approximate meanwhile.
            self._metrics.reconcile_failures.inc()
            log.warning("token reconciliation failed (%s)", err.code().name)
