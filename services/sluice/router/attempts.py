"""One request's attempts on the back ends: a provider stream in, client events out.

`Attempts` is built once per router; `Attempts.stream(...)` gives one request's
`RequestStream`, the collaborator that router/fallback.py's chain drives: it opens
each provider stream, relays it (the per-token loop), and serves the cache and the
simplified answer. Events are built by router/relay.py.

The per-token loop (`_relay`) is the hot path: one provider message in, one client
message out, no log line or metric label lookup per token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sluice.common.v1 import common_pb2
from sluice.core.errors import InvalidResponseError, ServiceUnavailableError
from sluice.core.grpcx.request_context import current_request_id
from sluice.core.telemetry.metrics import LATENCY_BUCKETS
from sluice.core.tokens import count_tokens
from sluice.provider.v1 import provider_pb2
from sluice.router import relay
from sluice.router.cache import CachedAnswer
from sluice.router.downstream import error_from_rpc
from sluice.router.provider_streams import Metadata, ProviderCall, ProviderStreams
from sluice.router.relay import CACHE, SIMPLIFIED, StreamState
from sluice.router.settings import BackendRef
from sluice.router.v1 import router_pb2
from sluice.router.validation import GenerationRequest


class StreamMetrics:
    """Time to first token, tokens streamed, streams in flight."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.time_to_first_token = Histogram(
            "sluice_router_time_to_first_token_seconds",
            "Time from request received to first token sent, by model alias.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens_streamed = Counter(
            "sluice_router_tokens_streamed",
            "Output tokens streamed to clients, by model alias and back end.",
            ["model", "backend"],
            registry=registry,
        )
        self.streams_in_flight = Gauge(
            "sluice_router_streams_in_flight",
            "Generations being streamed right now.",
            registry=registry,
        )


class Attempts:
    """Opens and relays provider streams for requests."""

    def __init__(
        self, provider: ProviderStreams, metrics: StreamMetrics, *, progress_interval_s: float
    ) -> None:
        self.provider = provider
        self.metrics = metrics
        self.progress_interval_s = progress_interval_s

    def stream(
        self, request: GenerationRequest, state: StreamState, forwarded: Metadata
    ) -> RequestStream:
        """The attempts of one request (`forwarded`: metadata the provider gets too)."""
        return RequestStream(self, request, state, forwarded)


class RequestStream:
    """One request's answer, attempt by attempt (router/fallback.py `ChainStream`)."""

    __slots__ = ("_attempts", "_forwarded", "_request", "state")

    def __init__(
        self,
        attempts: Attempts,
        request: GenerationRequest,
        state: StreamState,
        forwarded: Metadata,
    ) -> None:
        self._attempts = attempts
        self._request = request
        self._forwarded = forwarded
        self.state = state

    def begin_attempt(self, step: int, backend: str) -> None:
        """The chain starts an attempt at `step` on `backend`."""
        self.state.begin_attempt(step, backend)

    def attempt_refused(self) -> None:
        """The attempt just begun never started (the back end's bulkhead was full)."""
        self.state.attempt_refused()

    def failed_over(self, prompt: Sequence[common_pb2.Message]) -> None:
        """The attempt broke after its tokens reached the client; the next continues."""
        self.state.failed_over(prompt)

    async def attempt(
        self,
        target: BackendRef,
        messages: Sequence[common_pb2.Message],
        max_tokens: int,
        timeout_s: float,
        first_token_timeout_s: float,
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        """One provider stream on one back end, relayed to the client."""
        request = self._request
        call = self._attempts.provider.open(
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
                whole_answer=self.state.whole_answer,
            ),
            timeout=max(0.001, timeout_s),
            metadata=self._forwarded,
        )
        cancellable = relay.UPSTREAM_CALLS.get()  # a Converse turn cancels its calls directly
        if cancellable is not None:
            cancellable.add(call)
        try:
            # A whole answer's first output is all of it: the chain gave it a longer wait.
            upstream = _first_token_within(call, first_token_timeout_s, target.backend)
            async for event in self._relay(upstream):
                yield event
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err, "provider") from err
        finally:
            call.cancel()  # no-op when finished; stops the provider at once on disconnect
            if cancellable is not None:
                cancellable.discard(call)

    async def _relay(
        self, call: AsyncIterator[provider_pb2.StreamEvent]
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        """The per-token loop: provider events in, client events out."""
        state = self.state
        model = self._request.model
        metrics = self._attempts.metrics
        last_progress = state.started
        interval = self._attempts.progress_interval_s
        perf_counter = time.perf_counter
        accepted = False  # the attempt's `start`, alone or on its first output event
        async for upstream in call:
            kind = upstream.WhichOneof("event")
            if not accepted:
                accepted = True
                if kind == "start":
                    yield self._metadata(upstream.start)
                    continue
                if upstream.HasField("started"):
                    yield self._metadata(upstream.started)
            if kind == "delta":
                delta = upstream.delta
                now = perf_counter()
                if state.add_text(delta.text, delta.token_count, now) and not state.whole_answer:
                    metrics.time_to_first_token.labels(model).observe(now - state.started)
                yield relay.data_event(delta.text, delta.token_count)
                if now - last_progress >= interval:
                    last_progress = now
                    yield relay.progress_event(state, now)
            elif kind == "tool_call":
                yield relay.tool_call_event(upstream.tool_call)
            # The end: an event of its own, or riding on the last output of a burst.
            if kind == "end" or upstream.HasField("ended"):
                end = upstream.end if kind == "end" else upstream.ended
                yield relay.progress_event(state, perf_counter())
                yield relay.provider_complete_event(
                    state, end.finish_reason, end.usage, perf_counter()
                )
        # Reading on to the end of the call (rather than returning at `end`) lets it
        # finish with OK instead of being cancelled.
        if not state.finished:
            raise InvalidResponseError(
                "the provider stream ended without a final event",
                metadata={"backend": state.backend},
            )

    def _metadata(self, start: provider_pb2.StreamStart) -> router_pb2.GenerateEvent:
        return relay.metadata_event(self.state, self._request.model, start.backend, start.model)

    async def serve_cached(self, cached: CachedAnswer) -> AsyncIterator[router_pb2.GenerateEvent]:
        """The answer the response cache kept for this request."""
        state = self.state
        state.begin_attempt(CACHE, "cache")
        yield relay.metadata_event(state, self._request.model, "cache")
        yield relay.data_event(cached.text, cached.output_tokens)
        state.add_text(cached.text, cached.output_tokens, time.perf_counter())
        yield relay.complete_event(
            cached.finish_reason,  # type: ignore[arg-type]
            common_pb2.Usage.FromString(cached.usage),
            CACHE,
        )

    async def serve_simplified(self, text: str) -> AsyncIterator[router_pb2.GenerateEvent]:
        """The alias's fixed simplified answer."""
        state = self.state
        state.begin_attempt(SIMPLIFIED, "simplified")
        yield relay.metadata_event(state, self._request.model, "simplified")
        yield relay.data_event(text, count_tokens(text))
        yield relay.complete_event(
            common_pb2.FINISH_REASON_STOP, common_pb2.Usage(estimated=True), SIMPLIFIED
        )


async def _first_token_within(
    call: ProviderCall, timeout_s: float, backend: str
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
