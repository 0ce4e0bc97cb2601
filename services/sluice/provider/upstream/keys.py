"""Provider keys: loaded from the environment or a file, never printed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sluice.provider.settings import HttpBackendSettings


class ApiKey:
    """A provider key. Its repr and str never show it; use ``reveal()`` for the header."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself, for the one place that sends it (the auth header)."""
        return self._value

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the key (and its long fragments) masked."""
        if not self._value:
            return text
        redacted = text.replace(self._value, "[REDACTED]")
        # Providers echo masked keys like "sk-ab*****wxyz"; drop any 8+ char fragment too.
        for size in (len(self._value) // 2, 8):
            if size >= 8:
                for start in range(0, len(self._value) - size + 1):
                    fragment = self._value[start : start + size]
                    if fragment in redacted:
                        redacted = redacted.replace(fragment, "[REDACTED]")
        return redacted

    def __repr__(self) -> str:
        return "ApiKey(****)"

    __str__ = __repr__


def load_api_key(
    settings: HttpBackendSettings, environ: Mapping[str, str] | None = None
) -> ApiKey | None:
    """The back end's key from its environment variable or file; None when it has none.

    Fails fast (ValueError naming the source, never the value) when a configured source
    is missing or empty, so a deployment without its secret does not start.
    """
    env = os.environ if environ is None else environ
    if settings.api_key_env:
        value = env.get(settings.api_key_env, "").strip()
        if not value:
            raise ValueError(f"environment variable {settings.api_key_env} is not set or empty")
        return ApiKey(value)
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ValueError(f"cannot read API key file {path}: {err.strerror}") from None
        if not value:
            raise ValueError(f"API key file {path} is empty")
        return ApiKey(value)
    return None
