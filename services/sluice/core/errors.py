"""The error taxonomy (docs/errors.md, generated from this module) and its mapping to
rich gRPC statuses.

Every failure a client can see is a ``SluiceError`` subclass that declares its reason
and gRPC code; ``to_rpc_status`` turns it into ``google.rpc.Status`` with ErrorInfo
plus the details that apply. The error-mapping interceptor is the only caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "sluice.dev"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field (becomes a BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exceeded limit (becomes a QuotaFailure.Violation)."""

    subject: str
    description: str


# The HTTP status of each reason (docs/errors.md). Envoy's transcoder maps gRPC codes on its
# own (RESOURCE_EXHAUSTED -> 429, UNAVAILABLE -> 503, FAILED_PRECONDITION -> 400 ...),
# which differs for OUT_OF_MEMORY, INVALID_RESPONSE and BUSINESS_RULE_VIOLATION; the
# status travels in this trailer and the edge applies it (launcher/envoy/errors.py).
HTTP_STATUS_HEADER = "x-sluice-http-status"
_HTTP_STATUS = {
    "OUT_OF_MEMORY": 503,
    "NETWORK_FAILURE": 503,
    "SERVICE_UNAVAILABLE": 503,
    "RATE_LIMIT_EXCEEDED": 429,
    "TOKEN_LIMIT_EXCEEDED": 400,  # nosec B105 - a reason name, not a secret
    "INVALID_RESPONSE": 502,
    "VALIDATION_ERROR": 400,
    "BUSINESS_RULE_VIOLATION": 412,
    "INVALID_INPUT": 400,
    "MISSING_PARAMETER": 400,
    "UNSUPPORTED_OPERATION": 501,
    "QUOTA_EXCEEDED": 429,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
}


class SluiceError(Exception):
    """Base of every error a client may see. Subclasses set ``reason`` and ``code``."""

    reason: str = "INTERNAL"
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    category: str = "system"
    """Where the failure lies: system, provider, business, user or limit (docs/errors.md)."""
    advice: str = "Retry once; if it persists, report the x-request-id."
    """What a client should do about it, as docs/errors.md tells client authors."""

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
        field_violations: Sequence[FieldViolation] = (),
        quota_violations: Sequence[QuotaViolation] = (),
        code: grpc.StatusCode | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self._http_status = http_status
        self.message = message
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s
        self.field_violations = tuple(field_violations)
        self.quota_violations = tuple(quota_violations)
        if code is not None:
            self.code = code

    @property
    def http_status(self) -> int:
        """The HTTP status a web client gets for this error (docs/errors.md)."""
        if self._http_status is not None:
            return self._http_status
        if self.reason == "AUTHORIZATION_ERROR":
            return 401 if self.code == grpc.StatusCode.UNAUTHENTICATED else 403
        return _HTTP_STATUS.get(self.reason, 500)


class OutOfMemoryError(SluiceError):
    """The gateway sheds load because its memory passed the configured bound."""

    reason = "OUT_OF_MEMORY"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    advice = "Retry later with backoff: the gateway is shedding load."


class NetworkFailureError(SluiceError):
    """A network hop failed."""

    reason = "NETWORK_FAILURE"
    code = grpc.StatusCode.UNAVAILABLE
    advice = "Retry with backoff: a connection between the gateway and a back end failed."


class ServiceUnavailableError(SluiceError):
    """A dependency is down or not ready."""

    reason = "SERVICE_UNAVAILABLE"
    code = grpc.StatusCode.UNAVAILABLE
    advice = "Retry after RetryInfo's delay when there is one, else with backoff."


class RateLimitExceededError(SluiceError):
    """The upstream provider answered 429."""

    reason = "RATE_LIMIT_EXCEEDED"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    category = "provider"
    advice = "Wait RetryInfo's delay (the provider's own reset time), then retry."


class TokenLimitExceededError(SluiceError):
    """The prompt or max_tokens is over the model's limit."""

    reason = "TOKEN_LIMIT_EXCEEDED"
    code = grpc.StatusCode.INVALID_ARGUMENT
    category = "provider"
    advice = "Do not retry as is: shorten the prompt or lower max_tokens."


class InvalidResponseError(SluiceError):
    """The upstream answered something outside its documented format."""

    reason = "INVALID_RESPONSE"
    code = grpc.StatusCode.UNAVAILABLE
    category = "provider"
    advice = "Retry; if it persists, report the x-request-id (the back end broke its format)."


class ValidationError(SluiceError):
    """A field failed validation; field_violations say which."""

    reason = "VALIDATION_ERROR"
    code = grpc.StatusCode.INVALID_ARGUMENT
    category = "business"
    advice = "Fix the fields BadRequest names; the same request fails again."


class AuthenticationError(SluiceError):
    """The API key is missing or unknown."""

    reason = "AUTHORIZATION_ERROR"
    code = grpc.StatusCode.UNAUTHENTICATED
    category = "business"
    advice = "Send a valid API key (Authorization: Bearer, or x-api-key)."


class PermissionDeniedError(SluiceError):
    """The API key is valid but may not do this."""

    reason = "AUTHORIZATION_ERROR"
    code = grpc.StatusCode.PERMISSION_DENIED
    category = "business"
    advice = "Use a key that may do this (e.g. one whose models include the alias)."


class BusinessRuleViolationError(SluiceError):
    """A business rule (budget, tier) refused the request."""

    reason = "BUSINESS_RULE_VIOLATION"
    code = grpc.StatusCode.FAILED_PRECONDITION
    category = "business"
    advice = (
        "Do not retry until the rule allows it: a spent budget (412) waits for the next "
        "period, a model outside the key's tier (403) needs another key or model."
    )


class InvalidInputError(SluiceError):
    """The input is malformed."""

    reason = "INVALID_INPUT"
    code = grpc.StatusCode.INVALID_ARGUMENT
    category = "user"
    advice = "Fix the request (metadata says what was wrong); do not retry it unchanged."


class MissingParameterError(SluiceError):
    """A required field is absent; field_violations name it."""

    reason = "MISSING_PARAMETER"
    code = grpc.StatusCode.INVALID_ARGUMENT
    category = "user"
    advice = "Add the field BadRequest names."


class UnsupportedOperationError(SluiceError):
    """The operation is not supported."""

    reason = "UNSUPPORTED_OPERATION"
    code = grpc.StatusCode.UNIMPLEMENTED
    category = "user"
    advice = "Do not retry: use a method, path or option the gateway supports."


class QuotaExceededError(SluiceError):
    """One of the gateway's own limits refused the request."""

    reason = "QUOTA_EXCEEDED"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    category = "limit"
    advice = "Wait RetryInfo's delay; QuotaFailure names the limit that refused."


class DeadlineExceededError(SluiceError):
    """The request's deadline passed or cannot be met."""

    reason = "DEADLINE_EXCEEDED"
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    advice = "Retry with a longer deadline or a smaller request."


class InternalError(SluiceError):
    """An unexpected failure; the message shown to clients is generic."""

    reason = "INTERNAL"
    code = grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_rpc_status(error: SluiceError) -> status_pb2.Status:
    """The google.rpc.Status for an error: ErrorInfo first, then the details that apply."""
    code_value: int = error.code.value[0]
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=DOMAIN, metadata=dict(error.metadata)
            )
        )
    ]
    if error.field_violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.field_violations
                    ]
                )
            )
        )
    if error.quota_violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in error.quota_violations
                    ]
                )
            )
        )
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(max(error.retry_after_s, 0.0) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code_value, message=error.message, details=details)


ERROR_TYPES: tuple[type[SluiceError], ...] = (
    OutOfMemoryError,
    NetworkFailureError,
    ServiceUnavailableError,
    RateLimitExceededError,
    TokenLimitExceededError,
    InvalidResponseError,
    ValidationError,
    AuthenticationError,
    PermissionDeniedError,
    BusinessRuleViolationError,
    InvalidInputError,
    MissingParameterError,
    UnsupportedOperationError,
    QuotaExceededError,
    DeadlineExceededError,
    InternalError,
)
"""Every error a client can see, in the order docs/errors.md lists them."""

# A status names only its reason: AUTHORIZATION_ERROR comes back as AuthenticationError
# (the status's own code, kept by from_rpc_status, says which of the two it was).
_ERROR_BY_REASON: dict[str, type[SluiceError]] = {
    error_type.reason: error_type for error_type in reversed(ERROR_TYPES)
}

_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailer that carries a call's google.rpc.Status (grpc_status keeps its name private)."""


def status_in_trailers(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> status_pb2.Status | None:
    """The google.rpc.Status a call's trailing metadata carries, or None (a bare status)."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode with this number (as in google.rpc.Status.code); UNKNOWN if none."""
    return _CODE_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def from_rpc_status(status: status_pb2.Status) -> SluiceError:
    """Rebuild the SluiceError a downstream service raised, so it can be passed on as is."""
    code = status_code(status.code)
    reason, metadata = "", {}
    retry_after_s: float | None = None
    fields: list[FieldViolation] = []
    quotas: list[QuotaViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            quotas.extend(QuotaViolation(v.subject, v.description) for v in quota.violations)
    error_cls = _ERROR_BY_REASON.get(reason, ServiceUnavailableError)
    return error_cls(
        status.message,
        metadata=metadata,
        retry_after_s=retry_after_s,
        field_violations=fields,
        quota_violations=quotas,
        code=code,
    )


def grpc_code_name(code: grpc.StatusCode) -> str:
    """'UNAVAILABLE' for grpc.StatusCode.UNAVAILABLE (the name clients see in JSON)."""
    return str(code.name)
