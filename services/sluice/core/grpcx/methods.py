"""gRPC method paths from the generated descriptors, not typed out by hand."""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor


def method_path(service: ServiceDescriptor, method: str) -> str:
    """The path grpc uses for `method` of `service`, such as
    "/sluice.provider.v1.ProviderService/Stream" (KeyError for a method it does not have)."""
    return f"/{service.full_name}/{service.methods_by_name[method].name}"
