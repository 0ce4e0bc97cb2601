"""First-token, idle and total limits of one upstream call."""

from __future__ import annotations

import asyncio

import aiohttp

from sluice.core.clock import Clock
from sluice.core.errors import ServiceUnavailableError
from sluice.provider.settings import TimeoutSettings
from sluice.provider.upstream.client import UpstreamClient, UpstreamRequest


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
