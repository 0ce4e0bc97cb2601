"""What every EraseUser RPC shares (GDPR Art. 17): checking the user id, and the audit
record each erasure leaves (docs/security.md, "Privacy").

The audit record names the user by a digest, not the id: the audit log outlives the
erased data, and an id kept there would keep what was erased. An operator who knows the
id finds its records with `sluice privacy digest --user ID`.
"""

from __future__ import annotations

import hashlib

from sluice.core.audit import AdminRecord, AuditLog
from sluice.core.errors import FieldViolation, ValidationError
from sluice.core.grpcx.tls import peer_identity
from sluice.core.grpcx.types import ServicerContext

MAX_USER_ID_CHARS = 256
"""As long as the router accepts (router/validation.py)."""


def user_digest(user_id: str) -> str:
    """How audit records name a user: `sha256:` and the first 16 hex digits."""
    return "sha256:" + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def check_user_id(user_id: str) -> None:
    """A typed INVALID_ARGUMENT unless `user_id` is 1 to 256 characters."""
    if not user_id or len(user_id) > MAX_USER_ID_CHARS:
        message = f"user_id must be 1 to {MAX_USER_ID_CHARS} characters"
        raise ValidationError(message, field_violations=[FieldViolation("user_id", message)])


def record_erasure(
    audit: AuditLog | None, context: ServicerContext, *, service: str, user_id: str, detail: str
) -> None:
    """Write the `privacy.erased` audit record (nothing when the audit log is off)."""
    if audit is None:
        return
    audit.admin(
        AdminRecord(
            action="privacy.erased",
            actor=peer_identity(context) or "(no certificate)",
            target=f"user {user_digest(user_id)}",
            detail=detail,
            service=service,
        )
    )
