"""JSON from the upstream: one object per event or body, or INVALID_RESPONSE."""

from __future__ import annotations

import json
from typing import Any

from sluice.core.errors import InvalidResponseError


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
