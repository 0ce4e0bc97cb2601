"""Client JSON parsed within bounds: every bad document is a typed ValidationError."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.core.bounded_json import MAX_DEPTH, nesting_depth, parse_json_object
from sluice.core.errors import ValidationError

FIELD = "tools[0].parameters_json"
SCHEMA = {"type": "object", "properties": {"q": {"type": "string", "pattern": "[{]"}}}


def parse(text: str, max_bytes: int = 65_536) -> dict[str, object]:
    return parse_json_object(text, field=FIELD, max_bytes=max_bytes)


def test_a_schema_object_parses() -> None:
    assert parse(json.dumps(SCHEMA)) == SCHEMA


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('"text"', "must be a JSON object, got str"),
        ("null", "must be a JSON object, got NoneType"),
        ('{"a": NaN}', "not valid JSON"),
        ('{"a": Infinity}', "not valid JSON"),
        ("[" * 20_000 + "]" * 20_000, f"deeper than {MAX_DEPTH}"),
        ('{"a":' * 10_000 + "1" + "}" * 10_000, f"deeper than {MAX_DEPTH}"),
        ("[" * 50_000, f"deeper than {MAX_DEPTH}"),  # unbalanced, still refused early
        ('{"k": "' + "x" * 70_000 + '"}', "at most 65536 bytes"),
    ],
)
def test_bad_documents_are_validation_errors_naming_the_field(text: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(text)
    (violation,) = caught.value.field_violations
    assert violation.field == FIELD
    assert says in violation.description
    assert caught.value.http_status == 400


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"pattern": "[" * 1_000, "escaped": '\\"[[[' + "{" * 500})
    assert nesting_depth(text) == 1
    assert parse(text)["pattern"] == "[" * 1_000


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=30,
    )
)
def test_any_json_value_parses_or_is_a_typed_error(value: object) -> None:
    text = json.dumps(value)
    try:
        parsed = parse(text)
    except ValidationError as err:
        assert err.field_violations[0].field == FIELD
        assert not isinstance(value, dict) or nesting_depth(text) > MAX_DEPTH
    else:
        assert parsed == value


@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_typed_error(text: str) -> None:
    try:
        parse(text)
    except ValidationError as err:
        assert err.reason == "VALIDATION_ERROR"


def test_the_depth_scan_is_linear_on_hostile_quoting() -> None:
    # Unterminated strings starting at every other character: a scan that retried each
    # quote would take quadratic time here.
    text = '"' + '\\"' * 32_000
    started = time.perf_counter()
    assert nesting_depth(text) == 0
    assert nesting_depth("[" + text) == 1
    assert time.perf_counter() - started < 0.5
