"""The error taxonomy and its mapping to and from rich google.rpc statuses."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sluice.common.v1 import common_pb2
from sluice.core import errors
from sluice.core.errors import (
    DOMAIN,
    FieldViolation,
    QuotaViolation,
    SluiceError,
    from_rpc_status,
    grpc_code_name,
    to_rpc_status,
)
from sluice.core.grpcx.methods import method_path
from sluice.provider.v1 import provider_pb2
from tests.support import details_of

ALL_ERRORS = [
    (errors.OutOfMemoryError, "OUT_OF_MEMORY", grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NetworkFailureError, "NETWORK_FAILURE", grpc.StatusCode.UNAVAILABLE),
    (errors.ServiceUnavailableError, "SERVICE_UNAVAILABLE", grpc.StatusCode.UNAVAILABLE),
    (errors.RateLimitExceededError, "RATE_LIMIT_EXCEEDED", grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.TokenLimitExceededError, "TOKEN_LIMIT_EXCEEDED", grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidResponseError, "INVALID_RESPONSE", grpc.StatusCode.UNAVAILABLE),
    (errors.ValidationError, "VALIDATION_ERROR", grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AuthenticationError, "AUTHORIZATION_ERROR", grpc.StatusCode.UNAUTHENTICATED),
    (
        errors.BusinessRuleViolationError,
        "BUSINESS_RULE_VIOLATION",
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    (errors.InvalidInputError, "INVALID_INPUT", grpc.StatusCode.INVALID_ARGUMENT),
    (errors.MissingParameterError, "MISSING_PARAMETER", grpc.StatusCode.INVALID_ARGUMENT),
    (errors.UnsupportedOperationError, "UNSUPPORTED_OPERATION", grpc.StatusCode.UNIMPLEMENTED),
    (errors.QuotaExceededError, "QUOTA_EXCEEDED", grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceededError, "DEADLINE_EXCEEDED", grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.InternalError, "INTERNAL", grpc.StatusCode.INTERNAL),
]


def _only(status: status_pb2.Status, message_type: type[Any]) -> object:
    found: list[Any] = details_of(status, message_type)
    assert len(found) == 1, f"expected one {message_type.__name__}, got {found}"
    return found[0]


@pytest.mark.parametrize(("cls", "reason", "code"), ALL_ERRORS)
def test_each_error_declares_its_reason_and_code(
    cls: type[SluiceError], reason: str, code: grpc.StatusCode
) -> None:
    error = cls("boom")

    assert error.reason == reason
    assert error.code == code
    status = to_rpc_status(error)
    assert status.code == code.value[0]
    assert status.message == "boom"


def test_error_info_is_first_and_carries_reason_domain_metadata() -> None:
    error = errors.ValidationError("bad model", metadata={"model": "gpt-x", "hint": "see list"})

    status = to_rpc_status(error)

    first = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(first)
    assert first.reason == "VALIDATION_ERROR"
    assert first.domain == DOMAIN == "sluice.dev"
    assert dict(first.metadata) == {"model": "gpt-x", "hint": "see list"}
    # Nothing else applies: no empty BadRequest, QuotaFailure or RetryInfo.
    assert len(status.details) == 1


def test_field_violations_become_bad_request() -> None:
    error = errors.ValidationError(
        "invalid",
        field_violations=[
            FieldViolation("messages", "required"),
            FieldViolation("max_tokens", "too large"),
        ],
    )

    bad = _only(to_rpc_status(error), error_details_pb2.BadRequest)

    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("messages", "required"),
        ("max_tokens", "too large"),
    ]


def test_quota_error_packs_quota_failure_and_retry_info() -> None:
    error = errors.QuotaExceededError(
        "slow down",
        metadata={"policy": "per_key"},
        retry_after_s=1.25,
        quota_violations=[QuotaViolation("api_key:k1", "at most 5 in a burst")],
    )

    status = to_rpc_status(error)

    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    quota = _only(status, error_details_pb2.QuotaFailure)
    assert isinstance(quota, error_details_pb2.QuotaFailure)
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("api_key:k1", "at most 5 in a burst")
    ]
    retry = _only(status, error_details_pb2.RetryInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds == 1
    assert retry.retry_delay.nanos == 250_000_000


def test_retry_after_zero_is_still_sent_and_negative_is_clamped() -> None:
    zero = _only(
        to_rpc_status(errors.QuotaExceededError("x", retry_after_s=0.0)),
        error_details_pb2.RetryInfo,
    )
    negative = _only(
        to_rpc_status(errors.QuotaExceededError("x", retry_after_s=-3.0)),
        error_details_pb2.RetryInfo,
    )

    assert isinstance(zero, error_details_pb2.RetryInfo)
    assert isinstance(negative, error_details_pb2.RetryInfo)
    assert zero.retry_delay.ToNanoseconds() == 0
    assert negative.retry_delay.ToNanoseconds() == 0


def test_code_override_is_used() -> None:
    error = errors.ValidationError("gone", code=grpc.StatusCode.NOT_FOUND)

    assert to_rpc_status(error).code == grpc.StatusCode.NOT_FOUND.value[0]
    # The class default is untouched.
    assert errors.ValidationError("x").code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(("cls", "reason", "code"), ALL_ERRORS)
def test_round_trip_through_the_wire_format(
    cls: type[SluiceError], reason: str, code: grpc.StatusCode
) -> None:
    original = cls(
        "the message",
        metadata={"k": "v"},
        retry_after_s=0.5,
        field_violations=[FieldViolation("f", "bad f")],
        quota_violations=[QuotaViolation("s", "over")],
    )
    # Through the exact bytes a client receives in grpc-status-details-bin.
    wire = status_pb2.Status.FromString(to_rpc_status(original).SerializeToString())

    rebuilt = from_rpc_status(wire)

    assert type(rebuilt) is cls
    assert rebuilt.reason == reason
    assert rebuilt.code == code
    assert rebuilt.message == "the message"
    assert rebuilt.metadata == {"k": "v"}
    assert rebuilt.retry_after_s == pytest.approx(0.5)
    assert rebuilt.field_violations == (FieldViolation("f", "bad f"),)
    assert rebuilt.quota_violations == (QuotaViolation("s", "over"),)


def test_round_trip_keeps_a_non_default_code() -> None:
    denied = errors.PermissionDeniedError("not for you", metadata={"tier": "normal"})

    rebuilt = from_rpc_status(to_rpc_status(denied))

    assert rebuilt.reason == "AUTHORIZATION_ERROR"
    assert rebuilt.code == grpc.StatusCode.PERMISSION_DENIED
    assert rebuilt.metadata == {"tier": "normal"}


def test_round_trip_without_optional_details() -> None:
    rebuilt = from_rpc_status(to_rpc_status(errors.NetworkFailureError("down")))

    assert isinstance(rebuilt, errors.NetworkFailureError)
    assert rebuilt.retry_after_s is None
    assert rebuilt.field_violations == ()
    assert rebuilt.quota_violations == ()


def test_status_without_error_info_becomes_service_unavailable_keeping_its_code() -> None:
    bare = status_pb2.Status(code=grpc.StatusCode.ABORTED.value[0], message="conflict")

    rebuilt = from_rpc_status(bare)

    assert isinstance(rebuilt, errors.ServiceUnavailableError)
    assert rebuilt.code == grpc.StatusCode.ABORTED
    assert rebuilt.message == "conflict"


def test_grpc_status_library_accepts_our_status() -> None:
    # The error-mapping interceptor hands our Status to grpc_status; code and message
    # must agree or grpc_status refuses it.
    status = rpc_status.to_status(to_rpc_status(errors.QuotaExceededError("q", retry_after_s=1)))

    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.details == "q"
    key, value = status.trailing_metadata[0]
    assert key == "grpc-status-details-bin"
    assert isinstance(
        from_rpc_status(status_pb2.Status.FromString(value)), errors.QuotaExceededError
    )


def test_grpc_code_name() -> None:
    assert grpc_code_name(grpc.StatusCode.UNAVAILABLE) == "UNAVAILABLE"


def test_status_code_by_number_and_unknown_for_any_other() -> None:
    assert errors.status_code(14) == grpc.StatusCode.UNAVAILABLE
    assert errors.status_code(0) == grpc.StatusCode.OK
    assert errors.status_code(99) == grpc.StatusCode.UNKNOWN


def test_the_rich_status_is_found_in_trailers_as_grpc_status_puts_it_there() -> None:
    rich = errors.to_rpc_status(errors.ValidationError("bad field"))
    trailers = (("x-other", "1"), *rpc_status.to_status(rich).trailing_metadata)

    assert errors.status_in_trailers(trailers) == rich
    assert errors.status_in_trailers((("x-other", "1"),)) is None
    assert errors.status_in_trailers(None) is None
    # A text value under the key is not a serialized status.
    assert errors.status_in_trailers(((errors.STATUS_DETAILS_KEY, "text"),)) is None


def test_method_path_is_the_one_grpc_routes_by() -> None:

    service = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"]
    assert method_path(service, "Multiplex") == "/sluice.provider.v1.ProviderService/Multiplex"
    with pytest.raises(KeyError):
        method_path(service, "Nonexistent")


def test_the_error_table_covers_every_reason_of_the_contract() -> None:
    contract = {
        name.removeprefix("ERROR_REASON_")
        for name in common_pb2.ErrorReason.DESCRIPTOR.values_by_name
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert {error.reason for error in errors.ERROR_TYPES} == contract
    assert {error.category for error in errors.ERROR_TYPES} == {
        "system",
        "provider",
        "business",
        "user",
        "limit",
    }
    assert all(error.advice for error in errors.ERROR_TYPES)
    # A status names only its reason: AUTHORIZATION_ERROR is rebuilt as the first type.
    rebuilt = from_rpc_status(to_rpc_status(errors.PermissionDeniedError("no")))
    assert type(rebuilt) is errors.AuthenticationError
    assert rebuilt.code == grpc.StatusCode.PERMISSION_DENIED
    assert rebuilt.http_status == 403
