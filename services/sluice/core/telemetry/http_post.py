"""One HTTP POST per export attempt, for the HTTP destinations of traces (OTLP/HTTP,
Zipkin, Azure; services/sluice/telemetry/forward/) and of metrics (metrics_push.py).

The attempt is bounded by `timeout_s` as a whole (connect + send + read), so a slow
receiver costs one timeout per attempt and is then retried like a 503.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Response:
    """What came back: status 0 when no response came at all (refused, timed out)."""

    status: int
    body: bytes
    retry_after_s: float | None
    error: str


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpPoster:
    """POSTs bodies to one URL over a session opened on first use."""

    def __init__(self, url: str, *, timeout_s: float, headers: dict[str, str]) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None

    async def post(self, body: bytes, content_type: str) -> Response:
        """One attempt; network failures and timeouts come back as status 0."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {**self._headers, "Content-Type": content_type}
        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                return Response(
                    response.status,
                    await response.read(),
                    retry_after(response.headers.get("Retry-After")),
                    f"HTTP {response.status}",
                )
        except (aiohttp.ClientError, TimeoutError) as err:
            return Response(0, b"", None, f"{type(err).__name__}: {err}")

    async def close(self) -> None:
        """Close the session's connections."""
        if self._session is not None:
            await self._session.close()
