"""RouterService: the gRPC methods, each a few lines over the Generate pipeline
(router/pipeline.py) or Converse (router/converse.py). Wired in router/wiring.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sluice.core.grpcx.call_context import CallContext
from sluice.core.grpcx.types import ServicerContext
from sluice.router.converse import Converser
from sluice.router.pipeline import Pipeline
from sluice.router.relay import fold
from sluice.router.v1 import router_pb2, router_pb2_grpc


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """The public API."""

    def __init__(self, pipeline: Pipeline, converser: Converser) -> None:
        self._pipeline = pipeline
        self._converser = converser

    def Generate(  # noqa: N802 - gRPC method name
        self, request: router_pb2.GenerateRequest, context: ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateEvent]:
        return self._pipeline.generate(request, CallContext.of_grpc(context))

    async def Complete(  # noqa: N802 - gRPC method name
        self, request: router_pb2.CompleteRequest, context: ServicerContext
    ) -> router_pb2.CompleteResponse:
        events = self._pipeline.generate(request, CallContext.of_grpc(context), whole_answer=True)
        answer = await fold(events)
        return router_pb2.CompleteResponse(
            model=request.model,
            text=answer.text,
            request_id=answer.metadata.request_id,
            trace_id=answer.metadata.trace_id,
            provider=answer.metadata.provider,
            finish_reason=answer.complete.finish_reason,
            usage=answer.complete.usage,
            fallback_step=answer.complete.fallback_step,
        )

    def Converse(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[router_pb2.ConverseRequest], context: ServicerContext
    ) -> AsyncIterator[router_pb2.ConverseEvent]:
        """Prompts and cancels in, turn events out (router/converse.py)."""
        return self._converser.rpc(request_iterator, CallContext.of_grpc(context))

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: router_pb2.ListModelsRequest, context: ServicerContext
    ) -> router_pb2.ListModelsResponse:
        return self._pipeline.list_models(CallContext.of_grpc(context))
