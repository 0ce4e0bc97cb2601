"""Priority classes and how a request gets its class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

PriorityClass = Literal["premium", "critical", "normal", "background"]
CLASSES: tuple[PriorityClass, ...] = ("premium", "critical", "normal", "background")
RANK: dict[str, int] = {name: rank for rank, name in enumerate(CLASSES)}
PRIORITY_HEADER = "x-sluice-priority"


def _as_class(name: str) -> PriorityClass | None:
    for known in CLASSES:
        if name == known:
            return known
    return None


def request_class(tier: str, metadata: Sequence[tuple[str, str | bytes]]) -> PriorityClass:
    """The key's tier, lowered (never raised) by an `x-sluice-priority` header."""
    base = _as_class(tier) or "normal"
    for key, value in metadata:
        if key == PRIORITY_HEADER:
            asked = _as_class((value.decode() if isinstance(value, bytes) else value).strip())
            if asked is not None and RANK[asked] > RANK[base]:
                return asked
    return base
