"""Request validation: every problem becomes a BadRequest field violation."""

from __future__ import annotations

import math
import re

from sluice.core.bounded_json import parse_json_object
from sluice.core.errors import FieldViolation, MissingParameterError, ValidationError
from sluice.router.settings import RouterSettings
from sluice.router.v1 import router_pb2

ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_STOP_SEQUENCES = 4
# What every back end accepts as a function name (OpenAI's rule is the strictest).
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

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
    if isinstance(request, router_pb2.GenerateRequest):
        _check_tools(request, settings, missing, invalid)
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


def _check_tools(
    request: router_pb2.GenerateRequest,
    settings: RouterSettings,
    missing: list[FieldViolation],
    invalid: list[FieldViolation],
) -> None:
    """Tools the back ends would refuse are the client's mistake: a 400 here, never a
    back-end failure that counts against its breaker (docs/security.md)."""
    if len(request.tools) > settings.max_tools:
        invalid.append(FieldViolation("tools", f"at most {settings.max_tools} tools"))
        return
    for index, tool in enumerate(request.tools):
        if not tool.name:
            missing.append(FieldViolation(f"tools[{index}].name", "required"))
        elif not TOOL_NAME.fullmatch(tool.name):
            invalid.append(
                FieldViolation(f"tools[{index}].name", "1 to 64 letters, digits, '_' or '-'")
            )
        if tool.parameters_json:
            try:
                parse_json_object(
                    tool.parameters_json,
                    field=f"tools[{index}].parameters_json",
                    max_bytes=settings.max_tool_parameters_bytes,
                )
            except ValidationError as err:
                invalid.extend(err.field_violations)
