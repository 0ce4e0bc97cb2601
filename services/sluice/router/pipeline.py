"""The Generate pipeline: one request from its call context to its last event.

Every front runs this: the gRPC servicer (Generate, Complete), the OpenAI HTTP front,
and Converse (gRPC or WebSocket), each through the `Pipeline` protocol with a
`CallContext` (core/grpcx/call_context.py). The stages, in order, each entered once
(docs/architecture.md draws them):

deadline and memory guard -> authenticate -> validate -> resolve the alias ->
limits (router/limits.py) -> fallback chain (router/fallback.py) over the request's
attempts (router/attempts.py) -> fair queue (router/admission.py) -> adaptive buffer
(router/buffer.py) -> numbering and the in-band error (router/relay.py) -> settle.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from sluice.core import headers
from sluice.core.audit import AuditLog, RequestRecord
from sluice.core.clock import Clock
from sluice.core.errors import (
    BusinessRuleViolationError,
    FieldViolation,
    InternalError,
    SluiceError,
    ValidationError,
)
from sluice.core.grpcx.call_context import CallContext, Metadata
from sluice.core.grpcx.request_context import current_request_id
from sluice.core.telemetry.tracing import current_trace_id
from sluice.router import genai, relay
from sluice.router.admission import Admission, request_class
from sluice.router.attempts import Attempts
from sluice.router.auth import ApiKeyAuthenticator, Principal
from sluice.router.buffer import adaptive
from sluice.router.degradation import MemoryGuard
from sluice.router.fallback import FallbackChain
from sluice.router.limits import Limits
from sluice.router.recent_requests import RecentRequests
from sluice.router.relay import StreamState
from sluice.router.settings import ModelAliasSettings, RouterSettings
from sluice.router.stream_caps import KeyCaps, StreamSlot
from sluice.router.v1 import router_pb2
from sluice.router.validation import GenerationRequest, validate_request


class Pipeline(Protocol):
    """What the fronts call (the gRPC servicer, router/openai_http.py, router/converse.py)."""

    def authenticate(self, metadata: Metadata) -> Principal:
        """The caller's principal (a front that checks a key once, e.g. a WebSocket)."""
        ...

    def open_stream(self, principal: Principal) -> StreamSlot | None:
        """A slot among the key's concurrent streams for a front that holds one for
        longer than a generation (a Converse stream); QUOTA_EXCEEDED at the key's cap."""
        ...

    def generate(
        self,
        request: GenerationRequest,
        call: CallContext,
        *,
        whole_answer: bool = False,
        slot: StreamSlot | None = None,
    ) -> AsyncGenerator[router_pb2.GenerateEvent, None]:
        """The events of one generation; raises SluiceError before the first one, ends
        with an in-band `error` event after it. `whole_answer`: the front relays nothing
        before the end, so the back end may answer in one piece. `slot`: the generation
        runs in a stream slot the front holds (else it takes one of its own)."""
        ...

    def list_models(self, call: CallContext) -> router_pb2.ListModelsResponse:
        """The model aliases the caller's key may use."""
        ...


def _first_text(event: router_pb2.GenerateEvent) -> bool:
    return event.HasField("data")


def _never(_event: router_pb2.GenerateEvent) -> bool:
    return False


class GeneratePipeline:
    """The router's `Pipeline`."""

    def __init__(
        self,
        settings: RouterSettings,
        *,
        authenticator: ApiKeyAuthenticator,
        limits: Limits,
        chain: FallbackChain,
        attempts: Attempts,
        memory: MemoryGuard,
        clock: Clock,
        admission: Admission | None = None,
        audit: AuditLog | None = None,
        caps: KeyCaps | None = None,
        recent: RecentRequests | None = None,
    ) -> None:
        self._settings = settings
        self._recent = recent
        self._audit = audit
        self._auth = authenticator
        self._limits = limits
        self._chain = chain
        self._attempts = attempts
        self._metrics = attempts.metrics
        self._memory = memory
        self._clock = clock
        self._admission = admission
        self._caps = caps

    def open_stream(self, principal: Principal) -> StreamSlot | None:
        """See `Pipeline.open_stream` (None when caps are not wired)."""
        return self._caps.acquire(principal) if self._caps is not None else None

    def authenticate(self, metadata: Metadata) -> Principal:
        """The caller's principal from request metadata."""
        return self._auth.authenticate(metadata)

    def list_models(self, call: CallContext) -> router_pb2.ListModelsResponse:
        """The aliases the caller's key may use, by name."""
        principal = self._auth.authenticate(call.metadata)
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

    async def generate(
        self,
        request: GenerationRequest,
        call: CallContext,
        *,
        whole_answer: bool = False,
        slot: StreamSlot | None = None,
    ) -> AsyncGenerator[router_pb2.GenerateEvent, None]:
        """See `Pipeline.generate`."""
        settings = self._settings
        whole_answer = whole_answer and settings.whole_answers
        state = StreamState(started=time.perf_counter(), whole_answer=whole_answer)
        remaining = call.time_remaining()
        deadline = self._clock.monotonic() + (
            remaining if remaining is not None else settings.request_timeout_s
        )
        self._chain.check_deadline(deadline)
        self._memory.check()
        principal = self._auth.authenticate(call.metadata)
        # From here every request is audited once, however it ends (`_record`).
        own: StreamSlot | None = None  # this generation's stream slot, released at its end
        try:
            validate_request(request, settings)
            alias = self._resolve_model(request, principal)
            max_tokens = request.max_tokens or alias.default_max_tokens
            if slot is None:
                # The key's stream cap, before the limiter: a refused stream takes no quota.
                own = self.open_stream(principal)
            await self._limits.admit(request, principal, max_tokens, state)
        except SluiceError as refused:
            if own is not None:
                own.release()
            self._record(request, principal, state, refused.reason)
            raise
        except BaseException as failed:
            if own is not None:
                own.release()
            self._record(request, principal, state, _outcome_of(failed))
            raise
        try:
            relayed, events = self._stream(
                request, call, principal, state, alias=alias, deadline=deadline
            )
        except BaseException:
            if own is not None:
                own.release()
            raise

        number = state.number
        outcome = "CANCELLED"  # the client left (the generator closed) unless set below
        try:
            async for event in relayed:
                yield number(event)
            outcome = "ok"
        except SluiceError as failure:
            outcome = failure.reason
            if state.sequence > 0:
                yield number(relay.error_event(failure, state.output_tokens))
            raise
        except Exception:
            outcome = "INTERNAL"
            if state.sequence > 0:
                internal = InternalError("internal error")
                yield number(relay.error_event(internal, state.output_tokens))
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
            if own is not None:
                own.release()
            self._limits.settle(request, principal, state)
            if self._recent is not None:  # an answered request may be scored (router/feedback.py)
                self._recent.remember(current_request_id(), principal.key_id)
            if state.output_tokens:
                self._metrics.tokens_streamed.labels(request.model, state.backend).inc(
                    state.output_tokens
                )
            self._record(request, principal, state, outcome)

    def _stream(
        self,
        request: GenerationRequest,
        call: CallContext,
        principal: Principal,
        state: StreamState,
        *,
        alias: ModelAliasSettings,
        deadline: float,
    ) -> tuple[
        AsyncGenerator[router_pb2.GenerateEvent, None], AsyncIterator[router_pb2.GenerateEvent]
    ]:
        """The stream chain of an admitted request: fallback chain, fair queue, buffer."""
        settings = self._settings
        whole_answer = state.whole_answer
        max_tokens = request.max_tokens or alias.default_max_tokens
        genai.annotate_request(request, alias.backends[0].backend, max_tokens)
        forwarded = tuple((k, v) for k, v in call.metadata if k == headers.FAULT)
        self._metrics.streams_in_flight.inc()
        events = self._chain.run(
            model=request.model,
            alias=alias,
            messages=request.messages,
            max_tokens=max_tokens,
            cache_extra=(
                # Per tenant: the CACHE step must never serve one tenant another's answer.
                principal.tenant,
                max_tokens,
                request.temperature if request.HasField("temperature") else None,
                list(request.stop),
                [tool.SerializeToString().hex() for tool in getattr(request, "tools", ())],
            ),
            deadline=deadline,
            stream=self._attempts.stream(request, state, forwarded),
            user=request.user,
        )
        if self._admission is not None:
            # Wait for capacity in the primary back end's fair queue, by class.
            events = self._admission.run(
                events,
                backend=alias.backends[0].backend,
                tenant=principal.tenant,
                klass=request_class(principal.tier, call.metadata),
                deadline=deadline,
                # A whole answer's first text is its last: no first-token time to learn from.
                is_first_token=_never if whole_answer else _first_text,
            )
        # The adaptive buffer (router/buffer.py): direct while the client keeps up,
        # coalesced and bounded (pausing the provider read) once it lags.
        relayed = adaptive(events, settings.buffer, self._clock, call.writer_behind)
        return relayed, events

    def _record(
        self, request: GenerationRequest, principal: Principal, state: StreamState, outcome: str
    ) -> None:
        """The request's audit record (core/audit.py): identifiers, counts, cost and
        outcome, never the prompt or the answer."""
        if self._audit is None:
            return
        usage = state.completed.usage if state.completed is not None else None
        self._audit.request(
            RequestRecord(
                key_id=principal.key_id,
                tenant=principal.tenant,
                model=request.model,
                outcome=outcome,
                input_tokens=usage.input_tokens if usage is not None else 0,
                output_tokens=usage.output_tokens if usage is not None else state.output_tokens,
                cost=state.cost,
                request_id=current_request_id(),
                trace_id=current_trace_id(),
                service="router",
            )
        )


def _outcome_of(error: BaseException) -> str:
    """The audit outcome of a request that ended with `error` (not a SluiceError)."""
    return "INTERNAL" if isinstance(error, Exception) else "CANCELLED"
