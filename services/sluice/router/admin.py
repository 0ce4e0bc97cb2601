"""RouterAdminService: operator-only actions on one router replica (protos/sluice/router/
v1/admin.proto). Today one: erasing a user's cached answers (GDPR erasure), audited."""

from __future__ import annotations

import logging

from sluice.core.audit import AuditLog
from sluice.core.erasure import check_user_id, record_erasure
from sluice.core.grpcx.types import ServicerContext
from sluice.router.fallback import FallbackChain
from sluice.router.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("sluice.router.admin")


class RouterAdminServicer(admin_pb2_grpc.RouterAdminServiceServicer):
    """Erases what the router keeps of a user: the response cache's answers."""

    def __init__(self, chain: FallbackChain, audit: AuditLog | None) -> None:
        self._chain = chain
        self._audit = audit

    async def EraseUser(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.EraseUserRequest, context: ServicerContext
    ) -> admin_pb2.EraseUserResponse:
        check_user_id(request.user_id)
        deleted = await self._chain.erase_user(request.user_id)
        log.info("erased %d cached answers of a user", deleted)
        record_erasure(
            self._audit,
            context,
            service="router",
            user_id=request.user_id,
            detail=f"cache_entries_deleted={deleted}",
        )
        return admin_pb2.EraseUserResponse(cache_entries_deleted=deleted)
