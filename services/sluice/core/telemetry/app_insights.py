"""Application Insights ingestion, shared by the trace destination
(services/sluice/telemetry/forward/azure_monitor.py) and the metrics push
(metrics_azure.py): the connection string, and track envelopes POSTed as a JSON array to
`<IngestionEndpoint>/v2.1/track`.

Authentication is the connection string's instrumentation key only (no Entra ID token).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from sluice.core.telemetry.http_post import HttpPoster, Response

DEFAULT_INGESTION = "https://dc.services.visualstudio.com"
# Breeze (the ingestion service) answers these for items worth sending again.
RETRYABLE = frozenset({408, 429, 439, 500, 502, 503, 504})
SDK_VERSION = f"sluice_py{platform.python_version()}"


class ConnectionStringError(ValueError):
    """The connection string is missing, unreadable or lacks an instrumentation key."""


@dataclass(frozen=True)
class ConnectionString:
    """The parts of an Application Insights connection string the exporters use."""

    instrumentation_key: str
    ingestion_endpoint: str

    @classmethod
    def parse(cls, text: str) -> ConnectionString:
        """`Key=Value;...` with case-insensitive keys, as Azure documents it."""
        parts: dict[str, str] = {}
        for item in text.strip().split(";"):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise ConnectionStringError(f"connection string part {key.strip()!r} has no '='")
            parts[key.strip().lower()] = value.strip()
        ikey = parts.get("instrumentationkey", "")
        if not ikey:
            raise ConnectionStringError("connection string has no InstrumentationKey")
        endpoint = parts.get("ingestionendpoint")
        if not endpoint:
            suffix = parts.get("endpointsuffix")
            endpoint = f"https://dc.{suffix}" if suffix else DEFAULT_INGESTION
        return cls(ikey, endpoint.rstrip("/"))

    @classmethod
    def load(cls, env: str, file: Path | None) -> ConnectionString:
        """From the file when given, else from the environment variable."""
        if file is not None:
            try:
                return cls.parse(file.read_text(encoding="utf-8"))
            except OSError as err:
                raise ConnectionStringError(f"cannot read {file}: {err}") from err
        text = os.environ.get(env, "")
        if not text:
            raise ConnectionStringError(f"environment variable {env} is empty or unset")
        return cls.parse(text)


class TrackPoster:
    """One POST of envelopes to the resource's track endpoint per call."""

    def __init__(self, connection: ConnectionString, *, timeout_s: float) -> None:
        self.instrumentation_key = connection.instrumentation_key
        self._poster = HttpPoster(
            f"{connection.ingestion_endpoint}/v2.1/track", timeout_s=timeout_s, headers={}
        )

    async def post(self, envelopes: list[dict[str, object]]) -> Response:
        """One attempt; network failures and timeouts come back as status 0."""
        return await self._poster.post(json.dumps(envelopes).encode(), "application/json")

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._poster.close()


def rejected_items(body: bytes) -> dict[int, int]:
    """A 206 answer's `errors`: status code by index of the envelope it rejected.

    Raises ValueError when the body is not that shape.
    """
    try:
        errors = json.loads(body).get("errors", [])
        return {int(error["index"]): int(error["statusCode"]) for error in errors}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"unreadable 206 body {body[:200]!r}") from err
