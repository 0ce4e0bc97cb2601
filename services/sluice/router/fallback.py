"""The fallback chain of a model alias and the guards around each back end
(docs/resilience.md).

primary → secondary(ies) → response cache → simplified response → clear error.

Each back end is guarded by a circuit breaker and a bulkhead; a failed attempt is
retried on the same back end (backoff with full jitter, upstream retry-after honoured,
retry budget, never past the deadline) only while no token of that attempt has reached
the client.
A back end that fails after tokens were streamed hands over to the next back end,
which continues the answer from the text so far (an assistant prefix); where no next
back end exists the error reaches the client in-band.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge

from sluice.common.v1 import common_pb2
from sluice.core.clock import Clock
from sluice.core.errors import (
    DeadlineExceededError,
    QuotaExceededError,
    QuotaViolation,
    ServiceUnavailableError,
    SluiceError,
)
from sluice.core.privacy import redact
from sluice.core.resilience.breaker import BreakerState, CircuitBreaker
from sluice.core.resilience.bulkhead import Bulkhead, BulkheadFullError
from sluice.core.resilience.retry import Backoff, RetryBudget
from sluice.core.telemetry.spans import RequestSpans
from sluice.router.cache import (
    CachedAnswer,
    RedisResponseCache,
    ResponseCache,
    ResponseStore,
    cache_key,
)
from sluice.router.genai import record_step
from sluice.router.provider_streams import split_target
from sluice.router.relay import CACHE, PRIMARY, SECONDARY, SIMPLIFIED, StreamState
from sluice.router.settings import BackendRef, ModelAliasSettings, RouterSettings
from sluice.router.v1 import router_pb2

log = logging.getLogger("sluice.router.fallback")

STEP_NAMES = {PRIMARY: "primary", SECONDARY: "secondary", CACHE: "cache", SIMPLIFIED: "simplified"}

# Failures that say "this back end is unwell": retried, counted by the breaker, and a
# reason to move down the chain. Anything else (bad input, a prompt over the context
# window, a deadline the caller set) would fail the same way everywhere.
BACKEND_FAILURES = frozenset(
    {
        "SERVICE_UNAVAILABLE",
        "NETWORK_FAILURE",
        "INVALID_RESPONSE",
        "RATE_LIMIT_EXCEEDED",
        "INTERNAL",
    }
)


class ChainStream(Protocol):
    """One request's answer as the chain drives it (router/attempts.py `RequestStream`):
    the chain decides where each attempt goes; the stream runs it and keeps the state."""

    @property
    def state(self) -> StreamState:
        """What the stream has produced so far (the chain only reads it)."""
        ...

    def begin_attempt(self, step: int, backend: str) -> None:
        """An attempt at `step` of the chain, on `backend`, is about to start."""
        ...

    def attempt_refused(self) -> None:
        """The attempt just begun never started (the back end had no room)."""
        ...

    def failed_over(self, prompt: Sequence[common_pb2.Message]) -> None:
        """The attempt broke after its tokens reached the client; the next continues."""
        ...

    def attempt(
        self,
        target: BackendRef,
        messages: Sequence[common_pb2.Message],
        max_tokens: int,
        timeout_s: float,
        first_token_timeout_s: float,
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        """Yield the client events of one provider stream; raise SluiceError on failure."""
        ...

    def serve_cached(self, cached: CachedAnswer) -> AsyncIterator[router_pb2.GenerateEvent]:
        """Yield the client events of a cached answer."""
        ...

    def serve_simplified(self, text: str) -> AsyncIterator[router_pb2.GenerateEvent]:
        """Yield the client events of the alias's simplified answer."""
        ...


class ResilienceMetrics:
    """Breaker state, fallback steps, retries, bulkhead refusals, errors by reason."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.breaker_state = Gauge(
            "sluice_router_breaker_state",
            "Circuit breaker state per back end: 0 closed, 1 half-open, 2 open.",
            ["backend"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "sluice_router_breaker_transitions",
            "Circuit breaker state changes, by back end and new state.",
            ["backend", "state"],
            registry=registry,
        )
        self.served = Counter(
            "sluice_router_fallback_served",
            "Streams completed, by model alias and the fallback step that served them.",
            ["model", "step"],
            registry=registry,
        )
        self.attempts = Counter(
            "sluice_router_backend_attempts",
            "Attempts sent to a back end, by back end.",
            ["backend"],
            registry=registry,
        )
        self.retries = Counter(
            "sluice_router_retries",
            "Retries of a back end after a failure, by back end.",
            ["backend"],
            registry=registry,
        )
        self.retry_budget_exhausted = Counter(
            "sluice_router_retry_budget_exhausted",
            "Retries skipped because the retry budget was spent.",
            registry=registry,
        )
        self.failovers = Counter(
            "sluice_router_midstream_failovers",
            "Streams continued on another back end after tokens were sent, by back end left.",
            ["backend"],
            registry=registry,
        )
        self.bulkhead_rejected = Counter(
            "sluice_router_bulkhead_rejected",
            "Attempts refused because a back end's bulkhead was full, by back end.",
            ["backend"],
            registry=registry,
        )
        self.backend_errors = Counter(
            "sluice_router_backend_errors",
            "Failed attempts, by back end and error reason.",
            ["backend", "reason"],
            registry=registry,
        )


class BackendGuard:
    """The breaker and bulkhead of one back end."""

    def __init__(
        self, name: str, settings: RouterSettings, clock: Clock, metrics: ResilienceMetrics
    ) -> None:
        resilience = settings.resilience
        policy = resilience.backends.get(name)
        self.name = name
        self.breaker_settings = (policy and policy.breaker) or resilience.breaker
        self.breaker = CircuitBreaker(self.breaker_settings, clock, self._on_transition)
        self.bulkhead = Bulkhead((policy and policy.bulkhead) or resilience.bulkhead)
        self._metrics = metrics
        metrics.breaker_state.labels(name).set(BreakerState.CLOSED)

    def _on_transition(self, old: BreakerState, new: BreakerState) -> None:
        self._metrics.breaker_state.labels(self.name).set(new)
        self._metrics.breaker_transitions.labels(self.name, new.name.lower()).inc()
        trace.get_current_span().add_event(
            "circuit_breaker.state_change",
            {"backend": self.name, "from": old.name, "to": new.name},
        )
        log.warning("circuit breaker of %s: %s -> %s", self.name, old.name, new.name)


class FallbackChain:
    """Runs a request down its alias's chain of back ends, then cache, then simplified."""

    def __init__(
        self,
        settings: RouterSettings,
        metrics: ResilienceMetrics,
        clock: Clock,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: Backoff | None = None,
        spans: RequestSpans | None = None,
    ) -> None:
        self._settings = settings
        self._spans = spans or RequestSpans(None)
        self._resilience = settings.resilience
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff or Backoff(self._resilience.retry)
        self.budget = RetryBudget(self._resilience.retry, clock)
        cache = self._resilience.cache
        self.cache: ResponseStore | None = None
        self._cache_store = "redis" if cache.redis_url else "memory"
        if cache.enabled and cache.redis_url:
            self.cache = RedisResponseCache(
                cache.redis_url, cache.ttl_s, metrics.registry, spans=self._spans
            )
        elif cache.enabled:
            self.cache = ResponseCache(
                cache.max_entries,
                cache.ttl_s,
                clock,
                max_bytes=cache.max_bytes,
                registry=metrics.registry,
            )
        self._guards: dict[str, BackendGuard] = {}
        # Several provider replicas: one that dies says nothing of the back ends behind it.
        self._provider_replicas = len(split_target(settings.provider_address)) > 1

    def _replica_failure(self, err: SluiceError) -> bool:
        """Whether the provider process failed (a replica died, its call broke) rather
        than the back end, while another replica can take the stream over."""
        return self._provider_replicas and err.metadata.get("dependency") == "provider"

    async def close(self) -> None:
        """Release the cache's connections."""
        if self.cache is not None:
            await self.cache.close()

    def guard(self, backend: str) -> BackendGuard:
        """The guard of a back end (created on first use)."""
        guard = self._guards.get(backend)
        if guard is None:
            guard = self._guards[backend] = BackendGuard(
                backend, self._settings, self._clock, self._metrics
            )
        return guard

    def check_deadline(self, deadline: float) -> None:
        """Refuse a request that cannot finish in time, before any work is done."""
        left_ms = (deadline - self._clock.monotonic()) * 1000.0
        if left_ms < self._resilience.min_deadline_ms:
            raise DeadlineExceededError(
                f"the request's deadline leaves {max(0, int(left_ms))} ms; "
                f"at least {self._resilience.min_deadline_ms} ms are needed",
                metadata={"remaining_ms": str(max(0, int(left_ms)))},
            )

    async def run(
        self,
        *,
        model: str,
        alias: ModelAliasSettings,
        messages: Sequence[common_pb2.Message],
        max_tokens: int,
        cache_extra: Sequence[Any],
        deadline: float,
        stream: ChainStream,
        user: str = "",
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        """Yield the client events of the step that serves the request (`user`, the
        end-user id, is remembered with a cached answer, for erasure)."""
        state = stream.state
        self.budget.record_request()
        key = cache_key(model, messages, cache_extra) if self.cache is not None else ""
        last_error: SluiceError | None = None
        breaker_waits: list[float] = []
        for index, target in enumerate(alias.backends):
            step = PRIMARY if index == 0 else SECONDARY
            guard = self.guard(target.backend)
            if index:
                self._step_event("secondary", target.backend, last_error)
            retry = 0
            while True:
                if not guard.breaker.allow():
                    breaker_waits.append(guard.breaker.retry_after_s())
                    record_step("circuit_breaker.rejected", {"sluice.backend": target.backend})
                    break
                self.check_deadline(deadline)
                streamed_before = state.output_tokens
                prompt = list(messages)
                if streamed_before:
                    # Continue the answer instead of restarting it.
                    prompt.append(
                        common_pb2.Message(role="assistant", content=state.answer_so_far())
                    )
                remaining_tokens = max_tokens - streamed_before
                stream.begin_attempt(step, target.backend)
                self._metrics.attempts.labels(target.backend).inc()
                try:
                    waiting = self._spans.queue_wait(
                        "bulkhead",
                        {"sluice.backend": target.backend},
                        refusals={BulkheadFullError: "rejected"},
                    )
                    async with guard.bulkhead.slot(waiting):
                        async for event in stream.attempt(
                            target,
                            prompt,
                            remaining_tokens,
                            deadline - self._clock.monotonic(),
                            (
                                guard.breaker_settings.whole_answer_timeout
                                if state.whole_answer
                                else guard.breaker_settings.timeout
                            )
                            / 1000.0,
                        ):
                            yield event
                except BulkheadFullError:
                    stream.attempt_refused()
                    self._metrics.bulkhead_rejected.labels(target.backend).inc()
                    record_step("bulkhead.rejected", {"sluice.backend": target.backend})
                    guard.breaker.record_success()  # a probe refused here proves nothing
                    last_error = QuotaExceededError(
                        "every back end of this model is at capacity",
                        metadata={"model": model},
                        quota_violations=[
                            QuotaViolation(
                                subject=f"backend:{target.backend}",
                                description="concurrent streams at the bulkhead limit",
                            )
                        ],
                        retry_after_s=1.0,
                    )
                    break
                except SluiceError as err:
                    self._metrics.backend_errors.labels(target.backend, err.reason).inc()
                    if err.reason not in BACKEND_FAILURES:
                        # The client's own mistake says nothing of the back end: no
                        # verdict, and a half-open probe slot it held is freed.
                        guard.breaker.record_abandoned()
                        raise
                    replica_failed = self._replica_failure(err)
                    if replica_failed:
                        # No verdict on the back end: its breaker must not open because a
                        # provider replica was killed (docs/runtime.md, "Replicas").
                        guard.breaker.record_abandoned()
                    else:
                        guard.breaker.record_failure()
                    last_error = err
                    if state.output_tokens > streamed_before:
                        # This attempt's tokens reached the client: no retry here; the next
                        # back end continues the answer (or the error goes out in-band).
                        # An attempt that failed before its own first token (e.g. a
                        # continuation that met a dying replica) is retried like any other:
                        # the client has seen nothing of it, so nothing can be duplicated.
                        self._metrics.failovers.labels(target.backend).inc()
                        record_step(
                            "failover",
                            {"sluice.backend": target.backend, "error.type": err.reason},
                        )
                        stream.failed_over(prompt)
                        if not replica_failed:
                            break
                        # The same back end continues the answer on another replica (the
                        # broken one gets no new streams for a while: provider_streams.py).
                    retry += 1
                    if retry >= self._resilience.retry.max_attempts:
                        break
                    if (
                        err.retry_after_s or 0.0
                    ) * 1000.0 > self._resilience.retry.max_retry_after_ms:
                        break
                    delay = self._backoff.delay_s(retry, err.retry_after_s)
                    left_ms = (deadline - self._clock.monotonic() - delay) * 1000.0
                    if left_ms < self._resilience.min_deadline_ms:
                        break
                    if not self.budget.try_spend():
                        self._metrics.retry_budget_exhausted.inc()
                        break
                    self._metrics.retries.labels(target.backend).inc()
                    record_step(
                        "retry",
                        {
                            "sluice.backend": target.backend,
                            "sluice.retry": retry,
                            "sluice.retry.delay_ms": round(delay * 1000.0, 3),
                            "error.type": err.reason,
                        },
                    )
                    await self._sleep(delay)
                    continue
                except BaseException:
                    # Cancelled (the client left) or a bug of ours: no verdict on the back end.
                    guard.breaker.record_abandoned()
                    raise
                guard.breaker.record_success()
                self._metrics.served.labels(model, STEP_NAMES[step]).inc()
                if self.cache is not None and not streamed_before:
                    with self._spans.cache("put", self._cache_store):
                        await self._store(key, state, user)
                return
        if state.output_tokens:
            assert last_error is not None  # nosec B101
            raise last_error
        if self.cache is not None:
            self._step_event("cache", "cache", last_error)
            with self._spans.cache("get", self._cache_store) as span:
                cached = await self.cache.get(key)
                span.set_attribute("sluice.cache.hit", cached is not None)
            if cached is not None:
                async for event in stream.serve_cached(cached):
                    yield event
                self._metrics.served.labels(model, "cache").inc()
                return
        if alias.simplified_text:
            self._step_event("simplified", "simplified", last_error)
            async for event in stream.serve_simplified(alias.simplified_text):
                yield event
            self._metrics.served.labels(model, "simplified").inc()
            return
        if last_error is None:
            raise ServiceUnavailableError(
                f"every back end of model '{model}' is temporarily disabled (circuit open)",
                metadata={"model": model},
                retry_after_s=max(0.001, min(breaker_waits or [1.0])),
            )
        raise last_error

    @staticmethod
    def _step_event(step: str, backend: str, after: SluiceError | None) -> None:
        """A `fallback` event: the chain moves on to `step` after `after` (None: breaker)."""
        record_step(
            "fallback",
            {
                "sluice.fallback.step": step,
                "sluice.backend": backend,
                "error.type": after.reason if after is not None else "CIRCUIT_OPEN",
            },
        )

    async def erase_user(self, user: str) -> int:
        """Delete the cached answers of `user`'s requests; returns how many."""
        return 0 if self.cache is None else await self.cache.erase_user(user)

    async def _store(self, key: str, state: StreamState, user: str) -> None:
        assert self.cache is not None  # nosec B101
        completed = state.completed
        if completed is None:
            return
        text = state.answer_so_far()
        if len(text) > self._resilience.cache.max_entry_chars:
            return
        if self._settings.privacy.redact_pii:
            text = redact(text)  # served redacted from the CACHE step (core/privacy.py)
        await self.cache.put(
            key,
            CachedAnswer(
                text=text,
                output_tokens=state.output_tokens,
                finish_reason=completed.finish_reason,
                usage=completed.usage.SerializeToString(),
            ),
            user,
        )
