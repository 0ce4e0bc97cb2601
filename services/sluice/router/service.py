"""RouterService: authenticate, validate, admit, route to a provider, stream back.

The per-token path (``_relay``) is the hot path: one provider message in, one client
message out, no log line or metric label lookup per token; counters are updated once
per stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from sluice.common.v1 import common_pb2
from sluice.core.clock import Clock, SystemClock
from sluice.core.errors import (
    BusinessRuleViolationError,
    FieldViolation,
    InternalError,
    InvalidResponseError,
    ServiceUnavailableError,
    SluiceError,
    UnsupportedOperationError,
    ValidationError,
)
from sluice.core.grpcx.channels import internal_channel
from sluice.core.grpcx.request_context import current_request_id
from sluice.core.grpcx.server import ServiceHost
from sluice.core.grpcx.types import ServicerContext
from sluice.core.telemetry.metrics import LATENCY_BUCKETS
from sluice.core.telemetry.spans import RequestSpans
from sluice.core.telemetry.tracing import current_trace_id
from sluice.core.tokens import count_tokens
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc
from sluice.provider.v1 import provider_pb2
from sluice.router import genai
from sluice.router.admission import Admission, request_class
from sluice.router.auth import ApiKeyAuthenticator, Principal
from sluice.router.budgets import Budgets
from sluice.router.buffer import adaptive
from sluice.router.converse import UPSTREAM_CALLS, Converser
from sluice.router.degradation import (
    LIMITER_DEGRADED,
    LIMITER_LOCAL_SHARE,
    LocalLimits,
    MemoryGuard,
)
from sluice.router.downstream import error_from_rpc
from sluice.router.fallback import FallbackChain, ResilienceMetrics
from sluice.router.leases import LeaseBook
from sluice.router.provider_streams import (
    PROVIDER_SERVICE,
    MultiplexedStreams,
    ProviderStreams,
    StreamCalls,
    split_target,
)
from sluice.router.settings import BackendRef, ModelAliasSettings, RouterSettings
from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.router.validation import GenerationRequest, validate_request

log = logging.getLogger("sluice.router")

_PRIMARY = common_pb2.FALLBACK_STEP_PRIMARY
_FAULT_HEADER = "x-sluice-fault"
_GENERATE = "/sluice.router.v1.RouterService/Generate"


class RouterMetrics:
    """Router-specific metrics: time to first token, tokens, streams in flight."""

    def __init__(self, host: ServiceHost) -> None:
        self.time_to_first_token = Histogram(
            "sluice_router_time_to_first_token_seconds",
            "Time from request received to first token sent, by model alias.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=host.registry,
        )
        self.tokens_streamed = Counter(
            "sluice_router_tokens_streamed",
            "Output tokens streamed to clients, by model alias and back end.",
            ["model", "backend"],
            registry=host.registry,
        )
        self.streams_in_flight = Gauge(
            "sluice_router_streams_in_flight",
            "Generations being streamed right now.",
            registry=host.registry,
        )
        self.limiter_fail_open = Counter(
            "sluice_router_limiter_fail_open",
            "Requests admitted without a limiter decision because the limiter failed.",
            registry=host.registry,
        )
        self.spend_failures = Counter(
            "sluice_router_spend_failures",
            "Finished streams whose cost could not be added to the shared budget spend.",
            registry=host.registry,
        )
        self.leased_admissions = Counter(
            "sluice_router_leased_admissions",
            "Requests admitted from permits the limiter leased in advance (no limiter call).",
            registry=host.registry,
        )
        self.reconcile_failures = Counter(
            "sluice_router_reconcile_failures",
            "Token reservations that could not be reconciled with real usage.",
            registry=host.registry,
        )


@dataclass(slots=True)
class StreamState:
    """What one stream has produced so far."""

    started: float
    sequence: int = 0
    output_tokens: int = 0
    first_token_at: float = 0.0
    backend: str = ""
    finished: bool = False
    attempt: int = 0
    step: int = _PRIMARY
    text: list[str] = field(default_factory=list)
    prior_usage: common_pb2.Usage = field(default_factory=common_pb2.Usage)
    completed: router_pb2.CompleteEvent | None = None
    degradations: list[str] = field(default_factory=list)
    reservation_id: str = ""
    """Set when a token limit reserved an estimate that must be reconciled at the end."""
    input_tokens_estimate: int = 0
    whole_answer: bool = False
    """The client waits for the whole answer (no partial output is relayed to it)."""


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """The public API."""

    def __init__(
        self,
        settings: RouterSettings,
        *,
        authenticator: ApiKeyAuthenticator,
        limiter: limiter_pb2_grpc.LimiterServiceStub,
        provider: ProviderStreams,
        metrics: RouterMetrics,
        chain: FallbackChain,
        clock: Clock,
        memory: MemoryGuard,
        local_limits: LocalLimits,
        admission: Admission | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self._admission = admission
        self._budgets = budgets
        self._memory = memory
        self._local_limits = local_limits
        self._reconciling: set[asyncio.Task[None]] = set()
        self._leases = LeaseBook(clock, ask=settings.limiter_lease_requests)
        self._settings = settings
        self._chain = chain
        self._clock = clock
        self._auth = authenticator
        self._limiter = limiter
        self._provider = provider
        self._metrics = metrics
        self._progress_interval_s = settings.progress_interval_ms / 1000.0
        self.converse: Converser | None = None
        """Serves Converse (and the WebSocket bridge); set by build_server."""

    # -- admission ---------------------------------------------------------------------

    def _resolve_model(
        self, request: GenerationRequest, principal: Principal
    ) -> ModelAliasSettings:
        alias = self._settings.models.get(request.model)
        if alias is None:
            known = ", ".join(sorted(self._settings.models))
            raise ValidationError(
                f"unknown model '{request.model[:64]}'; available: {known}",
                metadata={"model": request.model[:64]},
                field_violations=[
                    FieldViolation("model", f"unknown model alias '{request.model[:64]}'")
                ],
            )
        if not principal.may_use(request.model):
            raise BusinessRuleViolationError(
                f"model '{request.model}' is not available to this API key",
                metadata={"model": request.model, "tier": principal.tier},
                http_status=403,  # "model not in tier" (a spent budget is 412)
            )
        return alias

    async def _admit(
        self,
        request: GenerationRequest,
        principal: Principal,
        max_tokens: int,
        state: StreamState,
    ) -> None:
        budgets = self._budgets
        limit = budgets.budget(principal.key_id) if budgets is not None else None
        budget = None if budgets is None or limit is None else self._budget_of(budgets, limit)
        leases = self._leases
        lease_key = (principal.key_id, principal.tenant, request.user, _GENERATE, request.model)
        ask = 0
        if budget is None and leases.enabled:  # a budget is checked by every Acquire
            if leases.take(lease_key):
                self._metrics.leased_admissions.inc()
                genai.annotate_leased_admission()
                return
            ask = leases.ask_for(lease_key)
        prompt_tokens = sum(count_tokens(m.content) for m in request.messages)
        estimate = prompt_tokens + max_tokens
        sent_at = self._clock.monotonic()
        try:
            admitted = await self._limiter.Acquire(
                limiter_pb2.AcquireRequest(
                    api_key_id=principal.key_id,
                    tenant=principal.tenant,
                    user=request.user,
                    endpoint=_GENERATE,
                    model=request.model,
                    requests=1,
                    tokens=estimate,
                    budget=budget,
                    lease_requests=ask,
                ),
                timeout=self._settings.limiter_timeout_ms / 1000.0,
            )
            if ask:
                leases.granted(lease_key, admitted.lease.requests, admitted.lease.ttl_ms, sent_at)
                ask = 0
            # Only token limits hold a reservation; with none matched there is nothing to
            # reconcile and the hot path pays no second call.
            if any(policy.unit == "tokens" for policy in admitted.policies):
                state.reservation_id = admitted.reservation_id
                state.input_tokens_estimate = prompt_tokens
            if admitted.local_fallback:
                state.degradations.append(LIMITER_LOCAL_SHARE)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise error_from_rpc(err, "limiter") from err
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION and self._budgets is not None:
                self._budgets.refused.inc()  # the key's budget is spent
                raise error_from_rpc(err, "limiter") from err
            # Graceful degradation (SPEC §2.2): a broken limiter must not stop serving;
            # the router's local approximate limit (or, fail-closed, a refusal) stands in.
            log.warning("limiter unavailable (%s); deciding locally", err.code().name)
            if self._budgets is not None:
                self._budgets.check(principal.key_id)  # this router's own count of spend
            await self._local_limits.admit(principal.key_id)
            self._metrics.limiter_fail_open.inc()
            state.degradations.append(LIMITER_DEGRADED)
        finally:
            if ask:  # the ask got no answer (failed or cancelled): the next one may ask
                leases.refused(lease_key)

    # -- streaming ---------------------------------------------------------------------

    def _event(self, state: StreamState, **fields: Any) -> router_pb2.GenerateEvent:
        event = router_pb2.GenerateEvent(sequence=state.sequence, **fields)
        state.sequence += 1
        return event

    def _progress(self, state: StreamState, now: float) -> router_pb2.GenerateEvent:
        generating = now - state.first_token_at if state.first_token_at else 0.0
        rate = state.output_tokens / generating if generating > 0 else 0.0
        return self._event(
            state,
            progress=router_pb2.ProgressEvent(
                output_tokens=state.output_tokens,
                tokens_per_second=round(rate, 2),
                elapsed_ms=int((now - state.started) * 1000),
            ),
        )

    async def _generate(
        self, request: GenerationRequest, context: ServicerContext, *, whole_answer: bool = False
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        whole_answer = whole_answer and self._settings.whole_answers
        state = StreamState(started=time.perf_counter(), whole_answer=whole_answer)
        remaining = context.time_remaining()
        deadline = self._clock.monotonic() + (
            remaining if remaining is not None else self._settings.request_timeout_s
        )
        self._chain.check_deadline(deadline)
        self._memory.check()
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        validate_request(request, self._settings)
        alias = self._resolve_model(request, principal)
        max_tokens = request.max_tokens or alias.default_max_tokens
        await self._admit(request, principal, max_tokens, state)

        genai.annotate_request(request, alias.backends[0].backend, max_tokens)
        metadata = context.invocation_metadata() or ()
        forwarded = tuple((k, v) for k, v in metadata if k == _FAULT_HEADER)
        self._metrics.streams_in_flight.inc()

        def attempt(
            target: BackendRef,
            messages: Sequence[common_pb2.Message],
            max_tokens: int,
            timeout_s: float,
            first_token_timeout_s: float,
        ) -> AsyncIterator[router_pb2.GenerateEvent]:
            return self._attempt(
                request=request,
                state=state,
                target=target,
                messages=messages,
                max_tokens=max_tokens,
                timeout_s=timeout_s,
                first_token_timeout_s=first_token_timeout_s,
                forwarded=forwarded,
            )

        events = self._chain.run(
            model=request.model,
            alias=alias,
            messages=request.messages,
            max_tokens=max_tokens,
            cache_extra=(
                max_tokens,
                request.temperature if request.HasField("temperature") else None,
                list(request.stop),
                [tool.SerializeToString().hex() for tool in getattr(request, "tools", ())],
            ),
            deadline=deadline,
            state=state,
            attempt=attempt,
            make_event=lambda **fields: self._event(state, **fields),
        )
        if self._admission is not None:
            # Wait for capacity in the primary back end's fair queue, by class.
            events = self._admission.run(
                events,
                backend=alias.backends[0].backend,
                tenant=principal.tenant,
                klass=request_class(principal.tier, metadata),
                deadline=deadline,
                # A whole answer's first text is its last: no first-token time to learn from.
                is_first_token=lambda event: (
                    not whole_answer and event.WhichOneof("event") == "data"
                ),
            )
        # The adaptive buffer (router/buffer.py): direct while the client keeps up,
        # coalesced and bounded (pausing the provider read) once it lags.
        relayed = adaptive(
            events,
            self._settings.buffer,
            self._clock,
            state,
            getattr(context, "writer_behind", None),
        )
        try:
            async for event in relayed:
                yield event
        except SluiceError as failure:
            if state.sequence > 0:
                yield self._error_event(state, failure)
            raise
        except Exception:
            if state.sequence > 0:
                yield self._error_event(state, InternalError("internal error"))
            raise
        finally:
            # Close the stream chain here, in order, not in the loop's finaliser (where
            # its context managers may already be finalised): the buffer first (it stops
            # its reader), then the chain it was reading.
            await relayed.aclose()
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
            self._metrics.streams_in_flight.dec()
            if state.reservation_id:
                self._reconcile_later(state)
            if self._budgets is not None:
                usage = state.completed.usage if state.completed is not None else None
                cost = self._budgets.charge(
                    principal.key_id,
                    request.model,
                    usage.input_tokens
                    if usage is not None
                    else sum(count_tokens(m.content) for m in request.messages),
                    usage.output_tokens if usage is not None else state.output_tokens,
                )
                if cost > 0 and self._budgets.budget(principal.key_id) is not None:
                    # Only keys with a budget share their spend (one call per stream).
                    self._spend_later(self._budgets, principal.key_id, cost)
            if state.output_tokens:
                self._metrics.tokens_streamed.labels(request.model, state.backend).inc(
                    state.output_tokens
                )

    @staticmethod
    def _budget_of(budgets: Budgets, limit: float) -> limiter_pb2.Budget:
        settings = budgets.settings
        return limiter_pb2.Budget(
            limit=limit, period_s=settings.period_s, currency=settings.currency
        )

    def _spend_later(self, budgets: Budgets, key_id: str, cost: float) -> None:
        """Add a finished stream's cost to the key's shared spend (in the limiter)."""
        task = asyncio.ensure_future(
            self._spend(
                limiter_pb2.SpendRequest(
                    api_key_id=key_id, amount=cost, period_s=budgets.settings.period_s
                )
            )
        )
        self._reconciling.add(task)
        task.add_done_callback(self._reconciling.discard)

    async def _spend(self, request: limiter_pb2.SpendRequest) -> None:
        try:
            await self._limiter.Spend(request, timeout=self._settings.limiter_timeout_ms / 1000.0)
        except grpc.aio.AioRpcError as err:
            # Only this router's local count has it now (used while the limiter is away).
            self._metrics.spend_failures.inc()
            log.warning("budget spend not recorded in the limiter (%s)", err.code().name)

    def _reconcile_later(self, state: StreamState) -> None:
        """Settle the token reservation with real usage, however the stream ended."""
        usage = state.completed.usage if state.completed is not None else None
        actual = (
            usage.input_tokens + usage.output_tokens
            if usage is not None
            else state.input_tokens_estimate + state.output_tokens
        )
        task = asyncio.ensure_future(self._reconcile(state.reservation_id, actual))
        self._reconciling.add(task)
        task.add_done_callback(self._reconciling.discard)

    async def _reconcile(self, reservation_id: str, actual_tokens: int) -> None:
        try:
            await self._limiter.Reconcile(
                limiter_pb2.ReconcileRequest(
                    reservation_id=reservation_id, actual_tokens=actual_tokens
                ),
                timeout=self._settings.limiter_timeout_ms / 1000.0,
            )
        except grpc.aio.AioRpcError as err:
            # The reservation expires on its own; the limit is only approximate meanwhile.
            self._metrics.reconcile_failures.inc()
            log.warning("token reconciliation failed (%s)", err.code().name)

    async def _attempt(
        self,
        *,
        request: GenerationRequest,
        state: StreamState,
        target: BackendRef,
        messages: Sequence[common_pb2.Message],
        max_tokens: int,
        timeout_s: float,
        first_token_timeout_s: float,
        forwarded: tuple[tuple[str, str | bytes], ...],
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        """One provider stream on one back end, relayed to the client."""
        call = self._provider.open(
            provider_pb2.StreamRequest(
                request_id=current_request_id(),
                backend=target.backend,
                model=target.model,
                messages=messages,
                max_tokens=max_tokens,
                temperature=request.temperature if request.HasField("temperature") else None,
                stop=request.stop,
                tools=request.tools if isinstance(request, router_pb2.GenerateRequest) else (),
                start_with_first_output=True,
                end_with_last_output=True,
                whole_answer=state.whole_answer,
            ),
            timeout=max(0.001, timeout_s),
            metadata=forwarded,
        )
        cancellable = UPSTREAM_CALLS.get()  # a Converse turn cancels its calls directly
        if cancellable is not None:
            cancellable.add(call)
        try:
            # A whole answer's first output is all of it: the chain gave it a longer wait.
            upstream = _first_token_within(call, first_token_timeout_s, target.backend)
            async for event in self._relay(upstream, request, state):
                yield event
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err, "provider") from err
        finally:
            call.cancel()  # no-op when finished; stops the provider at once on disconnect
            if cancellable is not None:
                cancellable.discard(call)

    async def _relay(
        self,
        call: Any,
        request: GenerationRequest,
        state: StreamState,
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        """The per-token loop: provider events in, client events out."""
        last_progress = state.started
        interval = self._progress_interval_s
        perf_counter = time.perf_counter
        accepted = False  # the attempt's `start`, alone or on its first output event
        async for upstream in call:
            kind = upstream.WhichOneof("event")
            if not accepted:
                accepted = True
                if kind == "start":
                    yield self._metadata(upstream.start, request, state)
                    continue
                if upstream.HasField("started"):
                    yield self._metadata(upstream.started, request, state)
            if kind == "delta":
                delta = upstream.delta
                now = perf_counter()
                if not state.first_token_at:
                    state.first_token_at = now
                    if not state.whole_answer:
                        self._metrics.time_to_first_token.labels(request.model).observe(
                            now - state.started
                        )
                state.output_tokens += delta.token_count
                state.text.append(delta.text)
                yield self._event(
                    state, data=router_pb2.DataEvent(text=delta.text, token_count=delta.token_count)
                )
                if now - last_progress >= interval:
                    last_progress = now
                    yield self._progress(state, now)
            elif kind == "tool_call":
                yield self._event(state, tool_call=upstream.tool_call)
            # The end: an event of its own, or riding on the last output of a burst.
            if kind == "end" or upstream.HasField("ended"):
                yield self._progress(state, perf_counter())
                yield self._complete(upstream.end if kind == "end" else upstream.ended, state)
        # Reading on to the end of the call (rather than returning at `end`) lets it
        # finish with OK instead of being cancelled.
        if not state.finished:
            raise InvalidResponseError(
                "the provider stream ended without a final event",
                metadata={"backend": state.backend},
            )

    def _complete(
        self, end: provider_pb2.StreamEnd, state: StreamState
    ) -> router_pb2.GenerateEvent:
        """The `complete` event for the provider's end (alone, or on its last output)."""
        now = time.perf_counter()
        ttft = state.first_token_at - state.started if state.first_token_at else 0.0
        state.finished = True
        usage = end.usage
        if state.prior_usage.output_tokens:
            usage = _add_usage(usage, state.prior_usage)
        genai.annotate_completion(end.finish_reason, usage, ttft)
        state.completed = router_pb2.CompleteEvent(
            finish_reason=end.finish_reason,
            usage=usage,
            fallback_step=state.step,  # type: ignore[arg-type]
            time_to_first_token_ms=int(ttft * 1000),
            total_ms=int((now - state.started) * 1000),
        )
        return self._event(state, complete=state.completed)

    def _metadata(
        self, start: provider_pb2.StreamStart, request: GenerationRequest, state: StreamState
    ) -> router_pb2.GenerateEvent:
        genai.annotate_response_model(start.model)
        return self._event(
            state,
            metadata=router_pb2.MetadataEvent(
                request_id=current_request_id(),
                trace_id=current_trace_id(),
                model=request.model,
                provider=start.backend,
                provider_model=start.model,
                attempt=state.attempt,
                fallback_step=state.step,  # type: ignore[arg-type]
                degradations=state.degradations,
            ),
        )

    def _error_event(self, state: StreamState, error: SluiceError) -> router_pb2.GenerateEvent:
        return self._event(
            state,
            error=router_pb2.ErrorEvent(
                reason=error.reason,
                message=error.message,
                grpc_code=error.code.name,
                retry_after_ms=int((error.retry_after_s or 0.0) * 1000),
                usage=common_pb2.Usage(output_tokens=state.output_tokens, estimated=True),
            ),
        )

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        """The caller's principal from request metadata (another front checks a key once)."""
        return self._auth.authenticate(metadata)

    def generate_events(
        self, request: GenerationRequest, context: Any, *, whole_answer: bool = False
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        """The Generate pipeline for another front (router/openai_http.py): `context`
        needs only `invocation_metadata()` and `time_remaining()`. `whole_answer`: the
        front relays nothing before the end, so the back end may answer in one piece."""
        return self._generate(request, context, whole_answer=whole_answer)

    # -- RPCs --------------------------------------------------------------------------

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: router_pb2.GenerateRequest, context: ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        async for event in self._generate(request, context):
            yield event

    async def Complete(  # noqa: N802 - gRPC method name
        self, request: router_pb2.CompleteRequest, context: ServicerContext
    ) -> router_pb2.CompleteResponse:
        response = router_pb2.CompleteResponse(model=request.model)
        text: list[str] = []
        async for event in self._generate(request, context, whole_answer=True):
            kind = event.WhichOneof("event")
            if kind == "data":
                text.append(event.data.text)
            elif kind == "metadata":
                response.request_id = event.metadata.request_id
                response.trace_id = event.metadata.trace_id
                response.provider = event.metadata.provider
            elif kind == "complete":
                response.finish_reason = event.complete.finish_reason
                response.usage.CopyFrom(event.complete.usage)
                response.fallback_step = event.complete.fallback_step
        response.text = "".join(text)
        return response

    def Converse(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[router_pb2.ConverseRequest], context: ServicerContext
    ) -> AsyncIterator[router_pb2.ConverseEvent]:
        """Prompts and cancels in, turn events out (router/converse.py)."""
        if self.converse is None:
            raise UnsupportedOperationError("Converse is not enabled on this router")
        return self.converse.rpc(request_iterator, context)

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: router_pb2.ListModelsRequest, context: ServicerContext
    ) -> router_pb2.ListModelsResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        return router_pb2.ListModelsResponse(
            models=[
                router_pb2.ModelInfo(
                    id=name,
                    backends=[ref.backend for ref in alias.backends],
                    default_max_tokens=alias.default_max_tokens,
                )
                for name, alias in sorted(self._settings.models.items())
                if principal.may_use(name)
            ]
        )


def _add_usage(usage: common_pb2.Usage, prior: common_pb2.Usage) -> common_pb2.Usage:
    """Usage of a continued answer: the broken attempt's plus the continuation's."""
    return common_pb2.Usage(
        input_tokens=usage.input_tokens + prior.input_tokens,
        output_tokens=usage.output_tokens + prior.output_tokens,
        total_tokens=usage.total_tokens + prior.total_tokens,
        estimated=True,
    )


async def _first_token_within(
    call: Any, timeout_s: float, backend: str
) -> AsyncIterator[provider_pb2.StreamEvent]:
    """The provider stream, failed when no token (or end) comes within the call timeout.

    The breaker's `timeout` applies to the wait for the first token, not to the whole
    stream: a long answer is not a failure, a back end that says nothing is.
    """
    iterator = call.__aiter__()
    # asyncio.timeout_at, not wait_for: wait_for wraps each read in a task of its own.
    give_up = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            async with asyncio.timeout_at(give_up):
                message = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ServiceUnavailableError(
                f"the back end sent no token within {int(timeout_s * 1000)} ms",
                metadata={"backend": backend},
            ) from None
        yield message
        if message.WhichOneof("event") != "start":
            break
    async for message in iterator:
        yield message


def build_server(settings: RouterSettings, *, clock: Clock | None = None) -> ServiceHost:
    """Wire the router service. Call ``await host.start()`` to bind and serve."""
    host = ServiceHost("router", settings)
    clock = clock or SystemClock()
    tracing = host.tracer_provider if host.tracing_active else None
    limiter_channel = internal_channel(
        settings.limiter_address, "sluice.limiter.v1.LimiterService", tracing
    )
    provider_service = PROVIDER_SERVICE.full_name
    provider_channel = internal_channel(
        settings.provider_address,
        provider_service,
        tracing,
        retries=False,
        # A stalled client's stream holds at most one 64 KiB window here (router/buffer.py).
        fixed_window=True,
    )
    provider_streams: ProviderStreams = (
        MultiplexedStreams(
            [
                # Not the per-call channel: per-stream credit bounds a stalled stream
                # here, so the long-lived calls keep gRPC's probed (growing) window.
                internal_channel(address, provider_service, tracing, retries=False)
                for address in split_target(settings.provider_address)
            ],
            settings.provider_multiplex,
            fallback=StreamCalls(provider_channel),
        )
        if settings.provider_multiplex.enabled
        else StreamCalls(provider_channel)
    )
    spans = RequestSpans(
        host.tracer_provider.get_tracer("sluice.router") if host.tracing_active else None
    )
    chain = FallbackChain(settings, ResilienceMetrics(host.registry), clock, spans=spans)
    servicer = RouterServicer(
        settings,
        authenticator=ApiKeyAuthenticator(settings.api_keys),
        limiter=limiter_pb2_grpc.LimiterServiceStub(limiter_channel),
        provider=provider_streams,
        metrics=RouterMetrics(host),
        chain=chain,
        clock=clock,
        memory=MemoryGuard(settings.resilience.memory_limit_mb, clock, host.registry),
        local_limits=LocalLimits(
            settings.resilience.local_limit_rps,
            settings.resilience.limiter_fail_closed,
            host.registry,
        ),
        budgets=Budgets(settings.budgets, clock, host.registry),
        admission=(
            Admission(
                settings.admission,
                clock,
                host.registry,
                memory_limit_bytes=settings.resilience.memory_limit_mb * 1024 * 1024,
                spans=spans,
            )
            if settings.admission.enabled
            else None
        ),
    )
    servicer.converse = Converser(
        servicer,
        servicer.authenticate,
        settings.converse,
        host.registry,
        host.tracer_provider.get_tracer("sluice.router.converse") if host.tracing_active else None,
        monotonic=clock.monotonic,
    )
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, host.server)
    host.add_service(router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name)

    async def close_channels() -> None:
        await limiter_channel.close()
        await provider_streams.close()
        await provider_channel.close()
        await chain.close()

    host.add_cleanup(close_channels)
    if settings.http_api.enabled:
        _serve_http_api(host, settings, servicer)
    return host


def _serve_http_api(host: ServiceHost, settings: RouterSettings, servicer: RouterServicer) -> None:
    """The OpenAI-compatible HTTP listener, started with the gRPC server, stopped after it."""
    from sluice.router.openai_http import OpenAIHttpApi  # noqa: PLC0415 - only when enabled

    tracer = host.tracer_provider.get_tracer("sluice.router.http") if host.tracing_active else None
    api = OpenAIHttpApi(
        servicer,
        host.metrics,
        tracer,
        max_request_bytes=settings.http_api.max_request_bytes,
        shutdown_timeout_s=settings.server.shutdown_grace_s,
        pause_bytes=settings.buffer.pause_bytes,
    )
    host.http_api = api  # type: ignore[attr-defined]
    if settings.converse.websocket_enabled and servicer.converse is not None:
        from sluice.router.websocket_bridge import WebSocketBridge  # noqa: PLC0415

        WebSocketBridge(servicer.converse, host.metrics, tracer).register(api.app)

    async def start() -> None:
        await api.start(settings.http_api.host, settings.http_api.port)

    host.add_startup(start)
    host.add_cleanup(api.stop)
