"""Wrapping of grpc.aio method handlers, shared by our server interceptors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sluice.core.grpcx.types import ServicerContext

# A "stream behaviour" is what grpc.aio calls for a server-streaming method; a
# "unary behaviour" returns one response. Interceptors provide one wrapper for each.
StreamBehaviour = Callable[[Any, ServicerContext], AsyncIterator[Any] | Awaitable[None]]
UnaryBehaviour = Callable[[Any, ServicerContext], Awaitable[Any]]
StreamWrapper = Callable[[StreamBehaviour], StreamBehaviour]
UnaryWrapper = Callable[[UnaryBehaviour], UnaryBehaviour]


class UndecodableRequest:
    """What a unary request becomes when its bytes do not parse as the method's message.

    grpc.aio answers a request its deserializer rejects with UNKNOWN (with the parser's
    exception text), and behind our interceptors the call was seen to hang instead: the
    tolerant deserializer below hands this on so the server pipeline answers a typed
    INVALID_ARGUMENT (core/grpcx/interceptors.py).
    """

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning an UndecodableRequest instead of raising."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        # Not swallowed: the handler answers the typed INVALID_ARGUMENT for it.
        try:  # nosemgrep: sluice-swallowed-exception
            return deserializer(data)
        except Exception as err:  # DecodeError, or anything a parser raises on bytes
            return UndecodableRequest(type(err).__name__)

    return parse


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    *,
    unary: UnaryWrapper,
    stream: StreamWrapper,
) -> grpc.RpcMethodHandler | None:
    """A copy of handler whose behaviour is wrapped; response-streaming RPCs get `stream`.
    A unary request that does not parse arrives as an UndecodableRequest."""
    if handler is None:
        return None
    if handler.response_streaming:
        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream),
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        unary(handler.unary_unary),
        request_deserializer=tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
