"""A cheap, deterministic token count used where a back end reports none.

Words and punctuation marks count one token each. The simulated model uses the same
rule for its own counts, so its usage is exact by construction; for real back ends it
is an estimate and flagged as such.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Number of tokens in text under the word-and-punctuation rule."""
    return len(_TOKEN.findall(text))
