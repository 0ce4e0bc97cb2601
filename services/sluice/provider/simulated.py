"""The built-in simulated model: the suite's default back end, not a test fake.

It produces deterministic text derived from the prompt, paced by a configured time to
first token and token rate, with exact token counts. The per-stream cost is one RNG
draw for the whole answer and one message per tick, so thousands of concurrent
streams are cheap: tokens due within one tick are sent together.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Sequence

from sluice.common.v1 import common_pb2
from sluice.core.clock import Clock, SystemClock
from sluice.core.errors import TokenLimitExceededError
from sluice.core.tokens import count_tokens
from sluice.provider.faults import FaultInjector
from sluice.provider.settings import FaultSettings, SimulatedBackendSettings
from sluice.provider.v1 import provider_pb2

_PROSE = (
    "a sluice is a water channel controlled at its head by a gate that regulates the flow "
    "of water gates lift and lower to keep levels even and mills canals and locks have "
    "used them for centuries the operator opens the gate slowly so the stream stays calm "
    "measures the level and closes it when the basin is full modern sluices use steel "
    "gates sensors and remote control yet the idea remains simple hold back what would "
    "flood release what is needed and keep every channel moving"
)
_VOCABULARY = tuple(_PROSE.split())
_STOP = common_pb2.FINISH_REASON_STOP
_LENGTH = common_pb2.FINISH_REASON_LENGTH


def _split_prefix(request: provider_pb2.StreamRequest) -> tuple[str, list[str]]:
    """The prompt text and the words of a trailing assistant message (a prefix to continue)."""
    messages = list(request.messages)
    prefix: list[str] = []
    if messages and messages[-1].role == "assistant":
        prefix = messages.pop().content.split()
    return "\n".join(m.content for m in messages), prefix


def _cut_at_stop(words: list[str], stops: Sequence[str]) -> list[str] | None:
    """The words before the earliest stop sequence (which is not emitted), or None."""
    text = " ".join(words)
    cuts = [index for index in (text.find(stop) for stop in stops if stop) if index >= 0]
    if not cuts:
        return None
    return [word for word in text[: min(cuts)].split(" ") if word]


class SimulatedBackend:
    """Streams a deterministic answer for each prompt."""

    kind = "simulated"

    def __init__(
        self, name: str, settings: SimulatedBackendSettings, clock: Clock | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock or SystemClock()
        self._rng = random.Random()  # noqa: S311  # nosec B311 - fault dice, not security

    def answer_words(self, prompt: str, max_tokens: int) -> list[str]:
        """The answer for a prompt: same prompt, same words."""
        seed = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")
        # Deterministic text, not security: a seeded PRNG is exactly what we want.
        rng = random.Random(seed)  # noqa: S311  # nosec B311
        natural = self.settings.answer_tokens
        length = max(1, natural // 2 + rng.randrange(natural + 1))
        return rng.choices(_VOCABULARY, k=min(length, max_tokens))

    async def stream(
        self, request: provider_pb2.StreamRequest, faults: FaultSettings | None = None
    ) -> AsyncIterator[provider_pb2.StreamEvent]:
        """Yield start, paced deltas, and end with exact usage.

        A trailing assistant message is a prefix to continue (mid-stream failover): when
        it matches the start of this prompt's answer, only the rest is generated.
        `faults` (else the configured ones) are injected on the way.
        """
        settings = self.settings
        faults = faults or settings.faults
        injector = FaultInjector(faults, self.name, self._rng) if faults.active else None
        if injector is not None:
            await injector.before_start()
        prompt, prefix = _split_prefix(request)
        input_tokens = count_tokens(prompt)
        # max_tokens 0 means "no cap": the answer's natural length, within the window.
        max_tokens = request.max_tokens or max(1, settings.context_window - input_tokens)
        if input_tokens + (request.max_tokens or 1) > settings.context_window:
            raise TokenLimitExceededError(
                f"prompt ({input_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"context window of {settings.model} ({settings.context_window} tokens)",
                metadata={"model": settings.model, "context_window": str(settings.context_window)},
            )
        words = self.answer_words(prompt, max_tokens + len(prefix))
        if prefix and words[: len(prefix)] == prefix:
            words = words[len(prefix) :]
        words = words[:max_tokens]
        finish = _LENGTH if len(words) >= max_tokens else _STOP
        stopped = _cut_at_stop(words, request.stop)
        if stopped is not None:
            words, finish = stopped, _STOP
        yield provider_pb2.StreamEvent(
            start=provider_pb2.StreamStart(backend=self.name, model=settings.model)
        )
        if injector is not None:
            await injector.after_start()
        if settings.time_to_first_token_ms > 0:
            await asyncio.sleep(settings.time_to_first_token_ms / 1000.0)
        drop = faults.drop_after_tokens if injector is not None else -1
        sent = 0
        async for text, count in self._paced(words, continuing=bool(prefix)):
            if injector is not None and drop >= 0 and sent + count > drop:
                keep = drop - sent
                if keep > 0:
                    # The chunk's words are space-separated, with a leading space after the first.
                    parts = text.split(" ")
                    lead = 1 if parts[0] == "" else 0
                    yield provider_pb2.StreamEvent(
                        delta=provider_pb2.TokenDelta(
                            text=" ".join(parts[: lead + keep]), token_count=keep
                        )
                    )
                injector.check_tokens(drop)
            sent += count
            yield provider_pb2.StreamEvent(
                delta=provider_pb2.TokenDelta(text=text, token_count=count)
            )
        yield provider_pb2.StreamEvent(
            end=provider_pb2.StreamEnd(
                finish_reason=finish,
                usage=common_pb2.Usage(
                    input_tokens=input_tokens,
                    output_tokens=len(words),
                    total_tokens=input_tokens + len(words),
                ),
            )
        )

    async def _paced(
        self, words: list[str], *, continuing: bool = False
    ) -> AsyncIterator[tuple[str, int]]:
        rate = self.settings.tokens_per_second
        if rate <= 0:
            yield " ".join(words), len(words)
            return
        tick = max(self.settings.min_tick_ms / 1000.0, 1.0 / rate)
        started = self._clock.monotonic()
        sent = 0
        total = len(words)
        while sent < total:
            # The first token is due at once; then one every 1/rate seconds.
            due = min(total, 1 + int((self._clock.monotonic() - started) * rate))
            if due > sent:
                chunk = words[sent:due]
                text = " ".join(chunk)
                yield (text if sent == 0 and not continuing else " " + text), len(chunk)
                sent = due
            if sent < total:
                await asyncio.sleep(tick)
