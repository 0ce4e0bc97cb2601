"""The upstream clusters: the router (gRPC and its HTTP listener), the limiter and the
telemetry service. One builder; each cluster differs only in what it passes."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from sluice.launcher.envoy.names import (
    H2_OPTIONS,
    HTTP_API_CLUSTER,
    LIMITER_CLUSTER,
    ROUTER_CLUSTER,
    ROUTER_SERVICE,
    TELEMETRY_CLUSTER,
    seconds,
)
from sluice.launcher.replicas import endpoints, replicas
from sluice.launcher.settings import EdgeCircuitBreakerSettings, SuiteSettings
from sluice.router.settings import HTTP_HEALTH_PATH


def discovery_type(host: str) -> str:
    """STATIC for an IP literal; STRICT_DNS for a name, which a STATIC cluster refuses
    ("malformed IP address"). In Kubernetes the router's address is its headless
    Service's name: STRICT_DNS keeps every ready pod's address as a host, refreshed from
    DNS, so Envoy balances over all of them (docs/kubernetes.md)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "STRICT_DNS"
    return "STATIC"


def cluster(
    name: str,
    host: str,
    port: int,
    *,
    kind: str | None = None,
    connect_timeout: str = "1s",
    http2: dict[str, Any] | None = None,
    health_service: str | None = None,
    health_path: str | None = None,
    health_interval_ms: int = 0,
    circuit_breakers: EdgeCircuitBreakerSettings | None = None,
    more_hosts: Sequence[tuple[str, int]] = (),
    tcp_health_check: bool = False,
    max_retries: int | None = None,
) -> dict[str, Any]:
    """One cluster of host:port and `more_hosts` (further replicas). `http2` (its protocol
    options) makes it HTTP/2; `health_service` adds an active gRPC health check, which
    needs HTTP/2; `health_path` an HTTP one (GET, 200 is healthy), `tcp_health_check` a
    connect-only one; `max_retries` overrides the breakers' bound on retries in flight
    (launcher/envoy/retries.py). Without a `kind`, the host decides it (`discovery_type`)."""
    kind = kind or discovery_type(host)
    built: dict[str, Any] = {"name": name, "type": kind, "connect_timeout": connect_timeout}
    if kind != "STATIC":
        # IPv4 first: "localhost" may resolve to ::1 while a part binds 127.0.0.1.
        built["dns_lookup_family"] = "V4_PREFERRED"
    if circuit_breakers is not None:
        built["circuit_breakers"] = {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": circuit_breakers.max_connections,
                    "max_pending_requests": circuit_breakers.max_pending_requests,
                    "max_requests": circuit_breakers.max_requests,
                    "max_retries": (
                        circuit_breakers.max_retries if max_retries is None else max_retries
                    ),
                }
            ]
        }
    if http2 is not None:
        built["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": H2_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": http2},
            }
        }
    hosts = [(host, port), *more_hosts]
    built["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                    for h, p in hosts
                ]
            }
        ],
    }
    if health_service is not None or health_path is not None or tcp_health_check:
        interval = seconds(health_interval_ms / 1000)
        check: dict[str, Any] = (
            {"grpc_health_check": {"service_name": health_service}}
            if health_service is not None
            else {"http_health_check": {"path": health_path}}
            if health_path is not None
            else {"tcp_health_check": {}}
        )
        built["health_checks"] = [
            {
                "timeout": "1s",
                "interval": interval,
                # Without it the second check comes about a minute after start, whatever
                # the interval (docs/envoy.md, "Health checks").
                "no_traffic_interval": interval,
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                **check,
            }
        ]
        # Never send traffic to a host that fails its health check (no panic routing).
        built["common_lb_config"] = {"healthy_panic_threshold": {"value": 0.0}}
    return built


def clusters(settings: SuiteSettings) -> list[dict[str, Any]]:
    """Every cluster the settings need, the router's gRPC cluster first."""
    envoy = settings.envoy
    router = settings.router
    routers = replicas(settings, "router")
    # More than one router: Envoy retries a request no router answered on another one
    # (retries.py), and must know which HTTP listeners are alive to balance over them.
    several = len(routers) > 1
    max_retries = envoy.circuit_breakers.max_requests if several else None
    built = [
        cluster(
            ROUTER_CLUSTER,
            router.server.host,
            router.server.port,
            http2={
                "max_concurrent_streams": envoy.circuit_breakers.max_streams_per_connection,
                "connection_keepalive": {"interval": "30s", "timeout": "10s"},
            },
            health_service=ROUTER_SERVICE,
            health_interval_ms=envoy.health_check_interval_ms,
            circuit_breakers=envoy.circuit_breakers,
            more_hosts=endpoints(routers[1:]),
            max_retries=max_retries,
        )
    ]
    if router.http_api.enabled:
        # The OpenAI-compatible listener speaks HTTP/1.1; it fails its health check once
        # the router drains, so a stopping router gets no new HTTP request either.
        built.append(
            cluster(
                HTTP_API_CLUSTER,
                router.http_api.host,
                router.http_api.port,
                # GET /healthz turns 503 when the router starts draining (every replica).
                health_path=HTTP_HEALTH_PATH,
                health_interval_ms=envoy.health_check_interval_ms,
                circuit_breakers=envoy.circuit_breakers,
                more_hosts=endpoints(routers[1:], http=True),
                max_retries=max_retries,
            )
        )
    if envoy.rate_limit.enabled:
        # No active health check: the filter's timeout and failure mode decide what
        # happens when the limiter is down.
        limiter = settings.limiter.server
        built.append(
            cluster(
                LIMITER_CLUSTER,
                limiter.host,
                limiter.port,
                connect_timeout="0.25s",
                http2={},
                more_hosts=endpoints(replicas(settings, "limiter")[1:]),
            )
        )
    if router.tracing.enabled:
        # The OTLP/gRPC endpoint Envoy's tracer exports to (a name, hence STRICT_DNS).
        host, _, port = router.tracing.endpoint.rpartition(":")
        built.append(
            cluster(
                TELEMETRY_CLUSTER,
                host.strip("[]") or "127.0.0.1",
                int(port),
                kind="STRICT_DNS",
                http2={},
            )
        )
    return built
