"""OpenTelemetry GenAI spans and Prometheus histograms for each upstream LLM call.

One CLIENT span per upstream call, named ``chat {gen_ai.request.model}``, with the
GenAI semantic-convention attributes; prompt and completion text are recorded only
when the back end's ``record_content`` is on. The histograms are the conventions'
``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration`` and time to first
chunk, under Prometheus-legal names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram

from sluice.common.v1 import common_pb2
from sluice.core.clock import Clock
from sluice.core.telemetry.metrics import LATENCY_BUCKETS

# The GenAI conventions' advice for token counts: powers of 4 up to 64 Mi.
TOKEN_BUCKETS = tuple(float(4**n) for n in range(14))

_FINISH_NAMES: dict[int, str] = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    common_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
    common_pb2.FINISH_REASON_CANCELLED: "cancelled",
}


class GenAIInstruments:
    """The provider service's GenAI metrics and tracer (one per service)."""

    def __init__(self, registry: CollectorRegistry, tracer: trace.Tracer | None) -> None:
        self.tracer = tracer
        common = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per upstream call (gen_ai.client.token.usage), by token type.",
            [*common, "gen_ai_token_type", "backend"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of upstream calls (gen_ai.client.operation.duration).",
            [*common, "backend", "error_type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_chunk = Histogram(
            "gen_ai_client_time_to_first_chunk_seconds",
            "Time from sending an upstream request to its first content chunk.",
            [*common, "backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "sluice_provider_upstream_tokens",
            "Tokens consumed upstream, by back end, type (input, output, cached_input) and "
            "whether the count is an estimate; recorded for failed and cancelled calls too.",
            ["backend", "type", "estimated"],
            registry=registry,
        )


class UpstreamCall:
    """The span and measurements of one upstream call; ``finish`` exactly once."""

    def __init__(
        self,
        instruments: GenAIInstruments,
        clock: Clock,
        *,
        backend: str,
        provider: str,
        request_model: str,
        address: tuple[str, int],
        max_tokens: int,
        temperature: float | None,
        record_content: bool,
        prompt: Sequence[common_pb2.Message],
    ) -> None:
        self._instruments = instruments
        self._clock = clock
        self._started = clock.monotonic()
        self._labels = ("chat", provider, request_model)
        self._backend = backend
        self._record_content = record_content
        self._first_chunk = False
        self._finished = False
        self.output_text: list[str] | None = [] if record_content else None
        self.response_model = ""
        self.response_id = ""
        self.tools: list[str] = []
        self._span: trace.Span | None = None
        if instruments.tracer is not None:
            attributes: dict[str, str | int | float] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": request_model,
                "server.address": address[0],
                "server.port": address[1],
                "sluice.backend": backend,
            }
            if max_tokens:
                attributes["gen_ai.request.max_tokens"] = max_tokens
            if temperature is not None:
                attributes["gen_ai.request.temperature"] = temperature
            if record_content:
                attributes["gen_ai.input.messages"] = json.dumps(
                    [{"role": m.role, "content": m.content} for m in prompt]
                )
            self._span = instruments.tracer.start_span(
                f"chat {request_model}", kind=SpanKind.CLIENT, attributes=attributes
            )

    def chunk(self, text: str = "") -> None:
        """A content chunk arrived (measures time to first chunk once)."""
        if not self._first_chunk:
            self._first_chunk = True
            self._instruments.time_to_first_chunk.labels(*self._labels, self._backend).observe(
                self._clock.monotonic() - self._started
            )
        if self.output_text is not None and text:
            self.output_text.append(text)

    def tool(self, name: str) -> None:
        """The model called a tool."""
        if name and name not in self.tools:
            self.tools.append(name)

    def finish(
        self,
        usage: common_pb2.Usage,
        finish_reason: int,
        error_type: str | None,
    ) -> None:
        """Record usage, duration and the span's final attributes and status."""
        if self._finished:
            return
        self._finished = True
        instruments = self._instruments
        elapsed = self._clock.monotonic() - self._started
        instruments.duration.labels(*self._labels, self._backend, error_type or "").observe(elapsed)
        estimated = "true" if usage.estimated else "false"
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cached_input", usage.cached_input_tokens),
        ):
            if count:
                instruments.tokens.labels(self._backend, kind, estimated).inc(count)
        if usage.input_tokens or usage.output_tokens:
            instruments.token_usage.labels(*self._labels, "input", self._backend).observe(
                usage.input_tokens
            )
            instruments.token_usage.labels(*self._labels, "output", self._backend).observe(
                usage.output_tokens
            )
        span = self._span
        if span is None:
            return
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if usage.cached_input_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_input_tokens)
        span.set_attribute("sluice.usage.estimated", usage.estimated)
        if self.response_model:
            span.set_attribute("gen_ai.response.model", self.response_model)
        if self.response_id:
            span.set_attribute("gen_ai.response.id", self.response_id)
        if finish_reason in _FINISH_NAMES:
            span.set_attribute("gen_ai.response.finish_reasons", [_FINISH_NAMES[finish_reason]])
        if self.tools:
            span.set_attribute(
                "gen_ai.tool.name", self.tools[0] if len(self.tools) == 1 else ",".join(self.tools)
            )
        if self.output_text is not None:
            span.set_attribute(
                "gen_ai.output.messages",
                json.dumps([{"role": "assistant", "content": "".join(self.output_text)}]),
            )
        if error_type:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()
