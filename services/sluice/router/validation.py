"""Request validation: every problem becomes a BadRequest field violation."""

from __future__ import annotations

import math

from sluice.core.errors import FieldViolation, MissingParameterError, ValidationError
from sluice.router.settings import RouterSettings
from sluice.router.v1 import router_pb2

ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_STOP_SEQUENCES = 4

GenerationRequest = router_pb2.GenerateRequest | router_pb2.CompleteRequest


def validate_request(request: GenerationRequest, settings: RouterSettings) -> None:
    """Raise MissingParameterError or ValidationError listing every bad field at once."""
    missing: list[FieldViolation] = []
    invalid: list[FieldViolation] = []
    if not request.model:
        missing.append(FieldViolation("model", "required: a model alias such as 'default'"))
    if not request.messages:
        missing.append(FieldViolation("messages", "required: at least one message"))
    elif len(request.messages) > settings.max_messages:
        invalid.append(
            FieldViolation("messages", f"at most {settings.max_messages} messages are allowed")
        )
    total_chars = 0
    for index, message in enumerate(request.messages):
        if message.role not in ROLES:
            invalid.append(
                FieldViolation(
                    f"messages[{index}].role",
                    f"must be one of {', '.join(sorted(ROLES))}, got '{message.role[:32]}'",
                )
            )
        if not message.content:
            missing.append(FieldViolation(f"messages[{index}].content", "must not be empty"))
        total_chars += len(message.content)
    if total_chars > settings.max_prompt_chars:
        invalid.append(
            FieldViolation("messages", f"total content over {settings.max_prompt_chars} chars")
        )
    if not 0 <= request.max_tokens <= settings.max_tokens_limit:
        invalid.append(
            FieldViolation(
                "max_tokens",
                f"must be between 1 and {settings.max_tokens_limit} (or 0 for default)",
            )
        )
    if request.HasField("temperature") and not (
        math.isfinite(request.temperature) and 0.0 <= request.temperature <= 2.0
    ):
        invalid.append(FieldViolation("temperature", "must be between 0 and 2"))
    if len(request.stop) > MAX_STOP_SEQUENCES:
        invalid.append(FieldViolation("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences"))
    if len(request.user) > 256 or len(request.session_id) > 256:
        invalid.append(FieldViolation("user", "user and session_id are at most 256 chars"))
    if missing and not invalid:
        raise MissingParameterError(
            "missing required field(s): " + ", ".join(v.field for v in missing),
            field_violations=missing,
        )
    if missing or invalid:
        problems = missing + invalid
        raise ValidationError(
            "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in problems),
            field_violations=problems,
        )
