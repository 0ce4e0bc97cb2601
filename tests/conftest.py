"""Fixtures shared by every test suite (helpers live in tests/support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import FakeClock, ServiceStack


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock that moves only when the test advances it."""
    return FakeClock()


@pytest.fixture
async def stack() -> AsyncIterator[ServiceStack]:
    """Start services in-process; all are stopped (and channels closed) even on failure."""
    services = ServiceStack()
    try:
        yield services
    finally:
        await services.aclose()
