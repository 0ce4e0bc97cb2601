"""What every HTTP back end shares: keys, pacing, timed SSE reading, error translation.

Upstream failures become SPEC §2.1 errors here, from each provider's real status codes,
headers and error bodies. Provider keys never leave this module's ``ApiKey``: it does
not print, and every upstream text that reaches an error message is redacted first.
"""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiolimiter import AsyncLimiter

from sluice.common.v1 import common_pb2
from sluice.core.clock import Clock
from sluice.core.errors import (
    AuthenticationError,
    FieldViolation,
    InvalidInputError,
    InvalidResponseError,
    NetworkFailureError,
    PermissionDeniedError,
    RateLimitExceededError,
    ServiceUnavailableError,
    SluiceError,
    TokenLimitExceededError,
    ValidationError,
)
from sluice.provider.settings import HttpBackendSettings, PacingSettings, TimeoutSettings

_MAX_UPSTREAM_MESSAGE = 300
_DEFAULT_RETRY_S = 1.0


class ApiKey:
    """A provider key. Its repr and str never show it; use ``reveal()`` for the header."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself, for the one place that sends it (the auth header)."""
        return self._value

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the key (and its long fragments) masked."""
        if not self._value:
            return text
        redacted = text.replace(self._value, "[REDACTED]")
        # Providers echo masked keys like "sk-ab*****wxyz"; drop any 8+ char fragment too.
        for size in (len(self._value) // 2, 8):
            if size >= 8:
                for start in range(0, len(self._value) - size + 1):
                    fragment = self._value[start : start + size]
                    if fragment in redacted:
                        redacted = redacted.replace(fragment, "[REDACTED]")
        return redacted

    def __repr__(self) -> str:
        return "ApiKey(****)"

    __str__ = __repr__


def load_api_key(
    settings: HttpBackendSettings, environ: Mapping[str, str] | None = None
) -> ApiKey | None:
    """The back end's key from its environment variable or file; None when it has none.

    Fails fast (ValueError naming the source, never the value) when a configured source
    is missing or empty, so a deployment without its secret does not start.
    """
    env = os.environ if environ is None else environ
    if settings.api_key_env:
        value = env.get(settings.api_key_env, "").strip()
        if not value:
            raise ValueError(f"environment variable {settings.api_key_env} is not set or empty")
        return ApiKey(value)
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ValueError(f"cannot read API key file {path}: {err.strerror}") from None
        if not value:
            raise ValueError(f"API key file {path} is empty")
        return ApiKey(value)
    return None


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request to a back end, as its adapter builds it (body already encoded)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def json_request(url: str, body: dict[str, Any], headers: dict[str, str]) -> UpstreamRequest:
    """A POST of `body` as compact JSON."""
    return UpstreamRequest(
        "POST",
        url,
        {**headers, "Content-Type": "application/json"},
        json.dumps(body, separators=(",", ":")).encode(),
    )


class UpstreamClient:
    """A keep-alive HTTP/1.1 connection pool to one back end.

    aiohttp rather than httpx: on the per-token path it costs about a tenth of the CPU
    per streamed call (C response parser, no anyio layer). The session is opened on
    first use so that it belongs to the serving event loop.
    """

    def __init__(self, settings: HttpBackendSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        settings = self._settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.max_connections,
                ttl_dns_cache=300,
                keepalive_timeout=settings.timeouts.idle_s,
            ),
            # Reads are timed per event by Deadlines; only connecting is timed here.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=settings.timeouts.connect_s, sock_read=None
            ),
            trust_env=False,
            auto_decompress=True,
        )
        return self._session

    async def send(self, request: UpstreamRequest) -> aiohttp.ClientResponse:
        """Send `request` and return once the response head has arrived."""
        session = self._session or self._open()
        return await session.request(
            request.method,
            request.url,
            data=request.body,
            headers=request.headers,
            allow_redirects=False,
        )

    async def aclose(self) -> None:
        """Close the pool (idle and open connections)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def build_client(settings: HttpBackendSettings) -> UpstreamClient:
    """The connection pool of one back end."""
    return UpstreamClient(settings)


class Pacer:
    """Requests and tokens per minute against the upstream's quota (aiolimiter)."""

    def __init__(self, settings: PacingSettings) -> None:
        self.requests = (
            AsyncLimiter(settings.requests_per_minute, 60.0)
            if settings.requests_per_minute
            else None
        )
        self.tokens = (
            AsyncLimiter(settings.tokens_per_minute, 60.0) if settings.tokens_per_minute else None
        )

    async def acquire(self, tokens: int) -> None:
        """Wait until one more request of about `tokens` tokens fits the quota."""
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            # A request larger than a minute's quota waits for a whole minute, not forever.
            await self.tokens.acquire(min(max(tokens, 1), self.tokens.max_rate))


# -- usage ----------------------------------------------------------------------------


@dataclass(slots=True)
class UsageCount:
    """Token counts of one upstream call, exact where the back end reported them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    input_exact: bool = False
    output_exact: bool = False
    streamed_output: int = 0
    """Sum of the estimated counts of every delta sent (the fallback for output)."""
    accepted: bool = False
    """The upstream accepted the request (answered 200): from then on it counts."""

    def finish(self) -> common_pb2.Usage:
        """The Usage to report: exact counts where known, else estimates, flagged.
        Nothing before the upstream accepted the request (a refused call costs nothing)."""
        if not self.accepted:
            return common_pb2.Usage()
        output = self.output_tokens if self.output_exact else self.streamed_output
        return common_pb2.Usage(
            input_tokens=self.input_tokens,
            output_tokens=output,
            total_tokens=self.input_tokens + output,
            cached_input_tokens=self.cached_input_tokens,
            estimated=not (self.input_exact and self.output_exact),
        )


def usage_metadata(usage: common_pb2.Usage) -> dict[str, str]:
    """Usage as ErrorInfo metadata, so a failed stream still reports what it consumed."""
    return {
        "usage_input_tokens": str(usage.input_tokens),
        "usage_output_tokens": str(usage.output_tokens),
        "usage_cached_input_tokens": str(usage.cached_input_tokens),
        "usage_estimated": "true" if usage.estimated else "false",
    }


# -- reading a stream with timeouts ----------------------------------------------------


class Deadlines:
    """First-token, idle and total limits of one call, on an injected clock."""

    def __init__(self, timeouts: TimeoutSettings, clock: Clock, *, whole: bool = False) -> None:
        self._timeouts = timeouts
        self._clock = clock
        self._end = clock.monotonic() + timeouts.total_s
        self.first = True
        # A whole answer arrives in one piece when it is done: only the total limit
        # applies (a long answer is not a silent back end).
        self._whole = whole

    def next_wait(self) -> tuple[float, str]:
        """Seconds to wait for the next event and which limit that is."""
        phase = self._timeouts.first_token_s if self.first else self._timeouts.idle_s
        left = self._end - self._clock.monotonic()
        if left <= phase or self._whole:
            return max(left, 0.0), "total"
        return phase, "first_token" if self.first else "idle"


def timeout_error(backend: str, which: str, seconds: float) -> ServiceUnavailableError:
    """SERVICE_UNAVAILABLE for an upstream that sent nothing in time (`which` limit)."""
    return ServiceUnavailableError(
        f"back end '{backend}' sent nothing within its {which} timeout",
        metadata={"backend": backend, "timeout": which, "timeout_s": f"{seconds:g}"},
    )


async def send(
    client: UpstreamClient,
    request: UpstreamRequest,
    deadlines: Deadlines,
    backend: str,
) -> aiohttp.ClientResponse:
    """Send and wait for the response head within the first-token limit."""
    wait, which = deadlines.next_wait()
    try:
        async with asyncio.timeout(wait):
            return await client.send(request)
    except aiohttp.ClientError:
        raise  # also aiohttp's connect timeout (a TimeoutError too): a transport failure
    except TimeoutError:
        raise timeout_error(backend, which, wait) from None


@dataclass(slots=True)
class SseEvent:
    """One Server-Sent Event: its type ("message" when unnamed) and its data."""

    event: str
    data: str


class SseDecoder:
    """The WHATWG event-stream parser, fed text as it arrives, returning whole events."""

    def __init__(self) -> None:
        self._pending = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[SseEvent]:
        """Every event completed by `text` (an incomplete line waits for more)."""
        lines = (self._pending + text).splitlines(keepends=True)
        self._pending = ""
        if lines and not lines[-1].endswith(("\n", "\r")):
            self._pending = lines.pop()
        elif lines and lines[-1].endswith("\r"):
            # "\r" may be the first half of "\r\n": keep it until the next byte says.
            self._pending = lines.pop()
        events: list[SseEvent] = []
        for raw in lines:
            line = raw.rstrip("\r\n")
            if not line:
                if self._data:
                    events.append(SseEvent(self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
                continue
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            # "id" and "retry" matter to reconnecting browsers, not to one LLM call.
        return events

    def flush(self) -> None:
        """Account for the end of the body (a trailing "\r" line ending)."""
        if self._pending.endswith("\r"):
            self.feed("\n")


async def timed_batches(
    response: aiohttp.ClientResponse, deadlines: Deadlines, backend: str
) -> AsyncIterator[list[SseEvent]]:
    """The response's SSE events, grouped by the network read that completed them, each
    read within the first-token / idle / total limit. Events that arrive together can
    then travel together (one gRPC message instead of many)."""
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type != "text/event-stream":
        raise InvalidResponseError(
            f"back end '{backend}' did not answer with an event stream",
            metadata={"backend": backend, "content_type": content_type[:64]},
        )
    decoder = SseDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    content = response.content
    failure: aiohttp.ClientError | None = None
    while True:
        if failure is not None:
            raise failure
        wait, which = deadlines.next_wait()
        try:
            # asyncio.timeout (not wait_for): no task per read on the per-token path.
            async with asyncio.timeout(wait):
                raw = await content.readany()
        except TimeoutError:
            raise timeout_error(backend, which, wait) from None
        except aiohttp.ClientPayloadError as err:
            # aiohttp raises a reset before handing over the bytes that came with it;
            # take those first so that the tokens (and usage) they carry are not lost.
            failure, raw = err, _unread(content)
            if not raw:
                raise
        if not raw:
            decoder.feed(text_decoder.decode(b"", final=True))
            decoder.flush()
            return
        batch = decoder.feed(text_decoder.decode(raw))
        if batch:
            deadlines.first = False
            yield batch


def _unread(content: aiohttp.StreamReader) -> bytes:
    """Bytes already received but not yet read (aiohttp keeps them after an error)."""
    read_buffered = getattr(content, "_read_nowait", None)
    try:
        return read_buffered(-1) if read_buffered is not None else b""
    except Exception:  # a changed private API must not hide the original failure
        return b""


def parse_json(data: str, backend: str) -> dict[str, Any]:
    """One JSON object from the upstream, or INVALID_RESPONSE."""
    try:
        value = json.loads(data)
    except ValueError as err:
        raise InvalidResponseError(
            f"back end '{backend}' sent malformed JSON", metadata={"backend": backend}
        ) from err
    if not isinstance(value, dict):
        raise InvalidResponseError(
            f"back end '{backend}' sent JSON that is not an object", metadata={"backend": backend}
        )
    return value


def malformed(backend: str, what: str) -> InvalidResponseError:
    """INVALID_RESPONSE for a well-formed JSON event of the wrong shape."""
    return InvalidResponseError(
        f"back end '{backend}' sent an event outside its documented format ({what})",
        metadata={"backend": backend},
    )


# -- error translation ----------------------------------------------------------------


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: "1s", "6m0s", "120ms", "1h2m3.5s"."""
    parts = _DURATION_PART.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def retry_after_s(headers: Mapping[str, str], clock: Clock) -> float | None:
    """When the upstream says to retry: retry-after-ms, retry-after (seconds or date),
    else the soonest x-ratelimit-reset-* / anthropic-ratelimit-*-reset."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is not None:
        try:
            return max(float(value), 0.0)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
            if parsed is not None:
                return max(parsed.timestamp() - clock.wall(), 0.0)
    resets: list[float] = []
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if (text := headers.get(name)) and (seconds := _parse_duration(text)) is not None:
            resets.append(seconds)
    for name in ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset"):
        if text := headers.get(name):
            try:
                at = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                continue
            resets.append(max(at.timestamp() - clock.wall(), 0.0))
    return min(resets) if resets else None


def _error_fields(body: bytes) -> tuple[str, str, str]:
    """(type, code, message) from an OpenAI or Anthropic error body ('' when absent)."""
    try:
        value = json.loads(body)
    except ValueError:
        return "", "", ""
    error = value.get("error") if isinstance(value, dict) else None
    if not isinstance(error, dict):
        return "", "", ""

    def text(key: str) -> str:
        item = error.get(key)
        return str(item) if isinstance(item, (str, int)) else ""

    return text("type"), text("code"), text("message")


def _is_context_length(kind: str, code: str, message: str) -> bool:
    lowered = message.lower()
    return (
        code == "context_length_exceeded"
        or "maximum context length" in lowered
        or "prompt is too long" in lowered
        or "context window" in lowered
        or (kind == "invalid_request_error" and "max_tokens" in lowered and "exceed" in lowered)
    )


def translate_status(
    backend: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    key: ApiKey | None,
    clock: Clock,
) -> SluiceError:
    """The SPEC §2.1 error for an upstream HTTP error answer."""
    kind, code, upstream_message = _error_fields(body)
    if key is not None:
        upstream_message = key.redact(upstream_message)
    upstream_message = upstream_message[:_MAX_UPSTREAM_MESSAGE]
    metadata = {"backend": backend, "upstream_status": str(status)}
    if kind:
        metadata["upstream_error_type"] = kind
    if code:
        metadata["upstream_error_code"] = code
    request_id = headers.get("x-request-id") or headers.get("request-id")
    if request_id:
        metadata["upstream_request_id"] = request_id[:128]
    said = f": {upstream_message}" if upstream_message else ""
    if status < 400:
        return InvalidResponseError(
            f"back end '{backend}' answered HTTP {status} instead of a result", metadata=metadata
        )
    if status == 401:
        # The upstream's own text may echo (part of) our key: never pass it on.
        return AuthenticationError(
            f"back end '{backend}' rejected the gateway's credentials (HTTP 401)",
            metadata=metadata,
        )
    if status == 403:
        return PermissionDeniedError(
            f"back end '{backend}' refused the gateway access (HTTP 403)", metadata=metadata
        )
    if status == 404:
        return ValidationError(
            f"back end '{backend}' has no such model or endpoint (HTTP 404){said}",
            metadata=metadata,
            field_violations=[FieldViolation("model", "not found at the back end")],
        )
    if status == 413 or (status == 400 and _is_context_length(kind, code, upstream_message)):
        return TokenLimitExceededError(
            f"back end '{backend}': the request exceeds the model's context length{said}",
            metadata=metadata,
        )
    if status == 429:
        for header, field in (
            ("x-ratelimit-remaining-requests", "remaining_requests"),
            ("x-ratelimit-remaining-tokens", "remaining_tokens"),
            ("anthropic-ratelimit-requests-remaining", "remaining_requests"),
            ("anthropic-ratelimit-tokens-remaining", "remaining_tokens"),
        ):
            if (value := headers.get(header)) is not None:
                metadata[field] = value[:32]
        retry = retry_after_s(headers, clock)
        return RateLimitExceededError(
            f"back end '{backend}' is rate limiting the gateway (HTTP 429)",
            metadata=metadata,
            retry_after_s=_DEFAULT_RETRY_S if retry is None else retry,
        )
    if status == 408:
        return ServiceUnavailableError(
            f"back end '{backend}' timed out (HTTP 408)",
            metadata={**metadata, "timeout": "upstream"},
        )
    if status >= 500:
        overloaded = status == 529 or kind == "overloaded_error"
        what = "is overloaded" if overloaded else "failed"
        return ServiceUnavailableError(
            f"back end '{backend}' {what} (HTTP {status})",
            metadata=metadata,
            retry_after_s=retry_after_s(headers, clock),
        )
    return InvalidInputError(
        f"back end '{backend}' refused the request (HTTP {status}){said}", metadata=metadata
    )


# In-stream errors carry no status: map the provider's error type to the status it
# would have come with.
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "tokens": 429,
    "requests": 429,
    "api_error": 500,
    "server_error": 500,
    "overloaded_error": 529,
    "timeout_error": 408,
}


def translate_stream_error(
    backend: str, error: object, *, key: ApiKey | None, clock: Clock
) -> SluiceError:
    """The SPEC §2.1 error for an error object sent inside a stream."""
    kind = str(error.get("type", "")) if isinstance(error, dict) else ""
    body = json.dumps({"error": error if isinstance(error, dict) else {}}).encode()
    error_ = translate_status(
        backend, _STATUS_BY_TYPE.get(kind, 500), {}, body, key=key, clock=clock
    )
    error_.metadata["upstream_status"] = "stream"
    return error_


def _transport_kind(err: BaseException) -> str:
    """A stable name for a transport failure, whatever HTTP library raised it."""
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return "ConnectTimeout"
    if isinstance(err, aiohttp.ServerTimeoutError | TimeoutError):
        return "ReadTimeout"
    if isinstance(err, aiohttp.ClientConnectorError):
        return "ConnectError"
    if isinstance(err, aiohttp.ClientPayloadError) and "decod" in str(err).lower():
        return "DecodingError"
    if isinstance(err, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return "RemoteProtocolError"
    if isinstance(err, aiohttp.ClientResponseError):
        return "ProtocolError"
    return "TransportError"


def translate_transport(backend: str, err: BaseException) -> SluiceError:
    """The SPEC §2.1 error for a transport failure (refused, reset, timed out, garbled)."""
    kind = _transport_kind(err)
    metadata = {"backend": backend, "transport_error": kind}
    if kind == "ConnectTimeout":
        return NetworkFailureError(
            f"back end '{backend}' could not be reached in time", metadata=metadata
        )
    if kind == "ReadTimeout":
        return ServiceUnavailableError(
            f"back end '{backend}' stopped answering", metadata={**metadata, "timeout": "idle"}
        )
    if kind == "DecodingError":
        return InvalidResponseError(
            f"back end '{backend}' sent a body that cannot be decoded", metadata=metadata
        )
    return NetworkFailureError(f"the connection to back end '{backend}' failed", metadata=metadata)


def server_address(base_url: str) -> tuple[str, int]:
    """(host, port) of a base URL, for the server.address / server.port span attributes."""
    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname or "", port
