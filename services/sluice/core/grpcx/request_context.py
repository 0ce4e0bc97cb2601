"""Per-request values visible to logs and handlers without threading them through calls."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterable

from sluice.core import headers

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
MAX_REQUEST_ID = 64
"""Longest caller-given request id accepted (longer ones are replaced, so logs stay sane)."""


def new_request_id() -> str:
    """A random 128-bit request id in hex (cheap: one syscall, no uuid object)."""
    return os.urandom(16).hex()


def current_request_id() -> str:
    """The id of the request being served, or '' outside a request."""
    return request_id_var.get()


def accept_request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The caller's `x-request-id` when short and printable, else a new id."""
    for key, value in metadata or ():
        if key == headers.REQUEST_ID:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            if 0 < len(text) <= MAX_REQUEST_ID and text.isprintable():
                return text
            break
    return new_request_id()
