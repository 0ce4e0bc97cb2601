"""Fault injection for the built-in simulated model.

Faults come from a back end's configuration (``faults:``) and, only when the provider
runs with ``fault_injection: true``, per request from the ``x-sluice-fault`` metadata
header, so a test or a chaos run can make one request (or one back end, for a while)
fail in a chosen way. The header holds ``key=value`` pairs separated by commas, e.g.
``error_rate=1,backend=primary``; ``backend=`` scopes the faults to one back end (the
router forwards the header to every attempt, so a scoped fault lets failover through).

Each fault maps to the reason (docs/errors.md) a real upstream failure of that kind gets:
an upstream 500 is SERVICE_UNAVAILABLE, a 429 is RATE_LIMIT_EXCEEDED with a
retry-after, a malformed chunk is INVALID_RESPONSE, an over-long prompt is
TOKEN_LIMIT_EXCEEDED; a drop after N tokens fails the stream mid-way as a broken
upstream connection does.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from pydantic import ValidationError

from sluice.core import headers
from sluice.core.errors import (
    InvalidInputError,
    InvalidResponseError,
    RateLimitExceededError,
    ServiceUnavailableError,
    TokenLimitExceededError,
)
from sluice.provider.settings import FaultSettings

FAULT_HEADER = headers.FAULT

_FIELDS = frozenset(FaultSettings.model_fields)
_BOOLS = frozenset(
    name for name, field in FaultSettings.model_fields.items() if field.annotation is bool
)


def parse_fault_header(values: Sequence[str], backend: str) -> FaultSettings | None:
    """The faults that header values ask of `backend`, or None when none apply.

    A malformed header is the caller's mistake (INVALID_INPUT), never silently ignored:
    a chaos run that thinks it injects faults but does not would prove nothing.
    """
    merged: dict[str, str] = {}
    for value in values:
        pairs: dict[str, str] = {}
        for raw_item in value.split(","):
            item = raw_item.strip()
            if not item:
                continue
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or (key not in _FIELDS and key != "backend"):
                raise InvalidInputError(
                    f"bad {FAULT_HEADER} item '{item[:64]}'",
                    metadata={"header": FAULT_HEADER},
                )
            pairs[key] = raw.strip()
        scope = pairs.pop("backend", None)
        if scope is not None and scope != backend:
            continue
        merged.update(pairs)
    if not merged:
        return None
    try:
        return FaultSettings.model_validate(
            {
                k: (v.lower() in ("1", "true", "yes")) if k in _BOOLS else v
                for k, v in merged.items()
            }
        )
    except ValidationError as err:
        raise InvalidInputError(
            f"bad {FAULT_HEADER} value: {err.errors()[0]['loc'][0]}",
            metadata={"header": FAULT_HEADER},
        ) from None


class FaultInjector:
    """Applies one request's faults around the simulated model's stream."""

    def __init__(self, faults: FaultSettings, backend: str, rng: random.Random) -> None:
        self.faults = faults
        self._backend = backend
        self._rng = rng

    async def before_start(self) -> None:
        """Faults that strike before the back end accepts the request."""
        faults = self.faults
        if faults.added_latency_ms > 0:
            await asyncio.sleep(faults.added_latency_ms / 1000.0)
        meta = {"backend": self._backend, "injected": "true"}
        if faults.context_length_error:
            raise TokenLimitExceededError(
                "the prompt exceeds the model's context window", metadata=meta
            )
        if faults.error_rate and self._rng.random() < faults.error_rate:
            raise ServiceUnavailableError("the upstream model failed (HTTP 500)", metadata=meta)
        if faults.rate_limit_rate and self._rng.random() < faults.rate_limit_rate:
            raise RateLimitExceededError(
                "the upstream model is rate limited (HTTP 429)",
                metadata=meta,
                retry_after_s=faults.retry_after_ms / 1000.0,
            )
        if faults.malformed_chunk:
            raise InvalidResponseError("the upstream model sent a malformed chunk", metadata=meta)

    async def after_start(self) -> None:
        """A hang: accepted, then silence until the caller gives up."""
        if self.faults.hang:
            await asyncio.Event().wait()

    def check_tokens(self, sent: int) -> None:
        """Break the stream once `sent` tokens passed the configured drop point."""
        limit = self.faults.drop_after_tokens
        if limit >= 0 and sent >= limit:
            raise ServiceUnavailableError(
                "the upstream connection dropped mid-stream",
                metadata={"backend": self._backend, "injected": "true"},
            )
