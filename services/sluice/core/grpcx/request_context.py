"""Per-request values visible to logs and handlers without threading them through calls."""

from __future__ import annotations

import contextvars
import os

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def new_request_id() -> str:
    """A random 128-bit request id in hex (cheap: one syscall, no uuid object)."""
    return os.urandom(16).hex()


def current_request_id() -> str:
    """The id of the request being served, or '' outside a request."""
    return request_id_var.get()
