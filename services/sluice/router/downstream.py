"""Turning failed calls to other Sluice services into our typed errors."""

from __future__ import annotations

import grpc
from google.rpc import status_pb2

from sluice.core.errors import (
    DeadlineExceededError,
    NetworkFailureError,
    ServiceUnavailableError,
    SluiceError,
    from_rpc_status,
    status_code,
    status_in_trailers,
)


def error_from_rpc(err: grpc.aio.AioRpcError, dependency: str) -> SluiceError:
    """The typed error behind a failed downstream call.

    A status that carries rich details came from a Sluice service and is passed on as
    is; a bare status came from the transport and is classified by its code.
    """
    status = status_in_trailers(err.trailing_metadata())
    if status is not None:
        return from_rpc_status(status)
    return error_from_code(err.code(), dependency)


def error_from_status(status: status_pb2.Status, dependency: str) -> SluiceError:
    """The typed error behind a failed multiplexed stream's status (as error_from_rpc)."""
    if status.details:
        return from_rpc_status(status)
    return error_from_code(status_code(status.code), dependency)


def error_from_code(code: grpc.StatusCode, dependency: str) -> SluiceError:
    """The typed error for a bare status code, which came from the transport."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(f"deadline exceeded waiting for the {dependency}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return NetworkFailureError(
            f"the {dependency} service is unreachable", metadata={"dependency": dependency}
        )
    return ServiceUnavailableError(
        f"the {dependency} service failed ({code.name})", metadata={"dependency": dependency}
    )
