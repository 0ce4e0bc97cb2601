"""Upstream failures as the gateway's typed errors (docs/errors.md)."""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Mapping
from datetime import datetime

import aiohttp

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
from sluice.provider.upstream.keys import ApiKey

_MAX_UPSTREAM_MESSAGE = 300
_DEFAULT_RETRY_S = 1.0


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
    """The typed error (docs/errors.md) for an upstream HTTP error answer."""
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
    """The typed error (docs/errors.md) for an error object sent inside a stream."""
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
    """The typed error for a transport failure (refused, reset, timed out, garbled)."""
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
