"""Renders the Envoy front's configuration from the suite's settings.

Nothing here is hand-synchronised with the services: ports, the router's service
name and the transcoder's descriptor all come from settings and gen/. The committed
`deploy/envoy/envoy.yaml` is this renderer's output for the default settings (a test
keeps them equal). One module per section of the bootstrap; docs/envoy.md holds the
Envoy behaviour the choices rest on.
"""

from __future__ import annotations

from sluice.launcher.envoy.bootstrap import render, render_yaml
from sluice.launcher.envoy.browsers import GRPC_WEB_ALLOW_HEADERS, GRPC_WEB_EXPOSE_HEADERS
from sluice.launcher.envoy.descriptor import descriptor_path
from sluice.launcher.envoy.names import (
    HTTP_API_CLUSTER,
    LIMITER_CLUSTER,
    ROUTER_CLUSTER,
    ROUTER_SERVICE,
    TELEMETRY_CLUSTER,
)

__all__ = [
    "GRPC_WEB_ALLOW_HEADERS",
    "GRPC_WEB_EXPOSE_HEADERS",
    "HTTP_API_CLUSTER",
    "LIMITER_CLUSTER",
    "ROUTER_CLUSTER",
    "ROUTER_SERVICE",
    "TELEMETRY_CLUSTER",
    "descriptor_path",
    "render",
    "render_yaml",
]
