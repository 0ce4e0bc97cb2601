"""The word-and-punctuation token count."""

from __future__ import annotations

import pytest

from sluice.core.tokens import count_tokens


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   \n\t ", 0),
        ("hello", 1),
        ("hello world", 2),
        ("Hello, world!", 4),
        ("don't", 3),
        ("a;b", 3),
        ("snake_case words", 2),
        ("naïve café 東京", 3),
        ("3.14 is pi", 5),
        ("...", 3),
        ("line one\nline two", 4),
    ],
)
def test_count_tokens(text: str, expected: int) -> None:
    assert count_tokens(text) == expected


def test_count_is_additive_over_whitespace_joins() -> None:
    parts = ["the gate opens", "slowly ,", "and the basin fills ."]

    assert count_tokens(" ".join(parts)) == sum(count_tokens(p) for p in parts)
