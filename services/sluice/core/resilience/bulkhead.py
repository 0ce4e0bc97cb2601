"""A bulkhead: bounded concurrent streams per back end plus a bounded wait (docs/resilience.md).

One slow back end fills only its own pool; callers that cannot get a slot within
``max_wait_ms`` (or find ``max_waiting`` callers already queued) are turned away at
once, so the fallback chain can move on instead of queueing behind the slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BulkheadSettings(BaseModel):
    """Bulkhead settings."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    max_concurrent: int = Field(10_000, ge=1)
    """Streams that may run on the back end at once: a hard guard above the router's
    adaptive limit, whose memory-derived ceiling (router.admission.adaptive) is what
    normally bounds them; keep it at least that high."""
    max_waiting: int = Field(64, ge=0)
    """Callers that may queue for a slot."""
    max_wait_ms: float = Field(100.0, ge=0.0)
    """Longest wait for a slot."""


class BulkheadFullError(Exception):
    """No slot within the bounded wait."""


class Bulkhead:
    """A concurrency pool with a bounded queue."""

    def __init__(self, settings: BulkheadSettings) -> None:
        self.settings = settings
        self._semaphore = asyncio.Semaphore(settings.max_concurrent)
        self._in_use = 0
        self._waiting = 0

    @property
    def in_use(self) -> int:
        """Slots taken."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Callers queued for a slot."""
        return self._waiting

    async def _acquire(self) -> None:
        if self._semaphore.locked():
            if self._waiting >= self.settings.max_waiting or self.settings.max_wait_ms <= 0:
                raise BulkheadFullError
            self._waiting += 1
            try:
                await asyncio.wait_for(
                    self._semaphore.acquire(), timeout=self.settings.max_wait_ms / 1000.0
                )
            except TimeoutError:
                raise BulkheadFullError from None
            finally:
                self._waiting -= 1
        else:
            await self._semaphore.acquire()
        self._in_use += 1

    @contextlib.asynccontextmanager
    async def slot(self, waiting: AbstractContextManager[Any] | None = None) -> AsyncIterator[None]:
        """Hold one slot for the duration of the block; BulkheadFullError when none.

        `waiting` wraps the wait for the slot only (the tracing of a queue wait).
        """
        if waiting is None:
            await self._acquire()
        else:
            with waiting:
                await self._acquire()
        try:
            yield
        finally:
            self._in_use -= 1
            self._semaphore.release()
