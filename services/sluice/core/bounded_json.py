"""JSON from clients, parsed within bounds: size, nesting depth, an object at the top.

`json.loads` on 50,000 nested brackets raises RecursionError and on `NaN` returns a
float no back end accepts: both surfaced as INTERNAL, and an INTERNAL from a back end
counts against its breaker. Checking the nesting before parsing keeps the parser's
recursion bounded, and every failure is a typed ValidationError naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sluice.core.errors import FieldViolation, ValidationError

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays accepted (JSON Schema documents need a handful)."""

# One left-to-right pass: a string (escapes included; an unterminated one runs to the end,
# so no position is scanned twice) or a bracket. Brackets inside strings do not count.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\Z)|[\[\]{}]', re.DOTALL)


def nesting_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in `text` (well-formed or not)."""
    depth = deepest = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth = max(0, depth - 1)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(
    text: str, *, field: str, max_bytes: int, max_depth: int = MAX_DEPTH
) -> dict[str, Any]:
    """`text` as a JSON object, or a ValidationError on `field` saying what is wrong."""

    def invalid(description: str) -> ValidationError:
        return ValidationError(
            f"invalid request: {field}: {description}",
            field_violations=[FieldViolation(field, description)],
        )

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise invalid(f"at most {max_bytes} bytes of JSON, got {size}")
    if nesting_depth(text) > max_depth:
        raise invalid(f"JSON nested deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise invalid(f"not valid JSON ({str(err)[:80]})") from err
    if not isinstance(value, dict):
        raise invalid(f"must be a JSON object, got {type(value).__name__}")
    return value
