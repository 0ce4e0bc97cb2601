"""What both fakes share: behaviour knobs, deterministic answers, pacing, the server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Every fault a fake can inject. HTTP-status faults answer before any byte of a stream;
# the others happen after `fault_after` content chunks of a streamed answer.
FAULTS = frozenset(
    {
        "unauthorized",  # 401
        "forbidden",  # 403
        "model_not_found",  # 404
        "context_length",  # 400, context window exceeded
        "bad_request",  # 400, a request the API refuses (e.g. an invalid tool schema)
        "request_timeout",  # 408
        "rate_limit",  # 429 with retry-after and rate-limit headers
        "server_error",  # 500
        "bad_gateway",  # 502
        "unavailable",  # 503
        "overloaded",  # Anthropic 529 (OpenAI: 503 "overloaded")
        "reset",  # connection closed before any response
        "reset_mid_stream",  # connection aborted after `fault_after` chunks
        "malformed_json",  # a body / data line that is not JSON
        "malformed_event",  # JSON that is not the documented event shape
        "truncated",  # a clean end of body without the terminator ([DONE] / message_stop)
        "stream_error",  # the provider's in-stream error object/event
        "stall",  # stop sending after `fault_after` chunks, connection kept open
        "no_usage",  # OpenAI: ignore stream_options.include_usage (some compatible servers)
        "empty_answer",  # OpenAI: an answer with no content (e.g. removed by a filter)
    }
)

_VOCABULARY = [
    "the",
    "gate",
    "opens",
    "slowly",
    "and",
    "water",
    "flows",
    "through",
    "the",
    "channel",
    "while",
    "the",
    "keeper",
    "watches",
    "the",
    "level",
    "rise",
    "until",
    "the",
    "basin",
    "is",
    "full",
]
_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """The fake's tokenizer: words and punctuation marks (what it reports as usage)."""
    return len(_TOKEN.findall(text))


@dataclass
class FakeBehaviour:
    """How a fake answers; tests change it between requests."""

    head_delay_ms: float = 0.0
    """Delay before the response head (status and headers) is sent."""
    ttft_ms: float = 0.0
    """Delay before the first content chunk."""
    tokens_per_second: float = 0.0
    """Pace of content chunks (one token each); 0 sends them back to back."""
    burst: bool = False
    """OpenAI: send a whole stream in one write (as a buffering server or proxy does)."""
    answer_tokens: int = 12
    """Length of an answer before max_tokens applies."""
    fault: str | None = None
    """One of FAULTS, or None for a healthy answer."""
    fault_after: int = 0
    """Content chunks sent before a mid-stream fault."""
    api_key: str | None = None
    """When set, requests must carry this key (Bearer / x-api-key)."""
    retry_after_s: int = 7
    """retry-after sent with 429 (and 529/503)."""
    context_window: int = 4096
    """Largest prompt + max_tokens accepted."""
    cached_tokens: int = 0
    """Prompt tokens reported as served from the prompt cache."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Every request body received, in order (for assertions)."""
    headers: list[dict[str, str]] = field(default_factory=list)
    """Every request's headers, in order."""

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}")


def answer_words(prompt: str, limit: int, length: int) -> list[str]:
    """A deterministic answer: the same prompt always gives the same words."""
    start = sum(prompt.encode()) % len(_VOCABULARY)
    count = max(1, min(limit, length))
    return [_VOCABULARY[(start + i) % len(_VOCABULARY)] for i in range(count)]


def tool_arguments(prompt: str) -> list[str]:
    """The JSON arguments of the fake's tool call, split into streamed pieces."""
    text = json.dumps({"query": " ".join(prompt.split()[:6])})
    third = max(1, len(text) // 3)
    return [text[:third], text[third : 2 * third], text[2 * third :]]


async def paced(behaviour: FakeBehaviour, items: list[str]) -> AsyncIterator[tuple[int, str]]:
    """(index, item) at the configured time to first token and rate."""
    if behaviour.ttft_ms > 0:
        await asyncio.sleep(behaviour.ttft_ms / 1000.0)
    gap = 1.0 / behaviour.tokens_per_second if behaviour.tokens_per_second > 0 else 0.0
    for index, item in enumerate(items):
        if index and gap:
            await asyncio.sleep(gap)
        yield index, item


async def receive(behaviour: FakeBehaviour, request: web.Request) -> bytes | None:
    """The request's body, read as a real API reads it: after the configured head delay,
    with its headers recorded. None when a `reset` fault cut the connection instead."""
    if behaviour.fault == "reset":
        await abort(request)
        return None
    raw = await request.read()
    if behaviour.head_delay_ms > 0:
        await asyncio.sleep(behaviour.head_delay_ms / 1000.0)
    behaviour.headers.append(dict(request.headers))
    return raw


async def abort(request: web.Request) -> None:
    """Drop the TCP connection without an HTTP answer (a reset seen by the client)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    # Give the event loop a turn so the abort happens before aiohttp writes anything.
    await asyncio.sleep(0)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeServer:
    """An aiohttp application on a loopback port; ``async with`` starts and stops it."""

    def __init__(self, routes: list[tuple[str, str, Handler]], behaviour: FakeBehaviour) -> None:
        self.behaviour = behaviour
        self.app = web.Application()
        for method, path, handler in routes:
            self.app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:<port>/v1, the base URL SDKs and adapters take."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind (port 0 picks a free one) and serve."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving and close every connection."""
        await self._runner.cleanup()

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def sse(data: str, event: str | None = None) -> bytes:
    """One Server-Sent Event, framed as the providers frame them."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()
