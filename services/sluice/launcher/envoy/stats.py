"""The stats listener: Envoy's admin interface stays on loopback (it can quit Envoy and
rewrite its runtime), so probes and Prometheus from outside the pod reach only its
read-only /ready and /stats/prometheus through a listener of their own that proxies GETs
of those two paths to the admin port (docs/kubernetes.md)."""

from __future__ import annotations

from typing import Any

from sluice.launcher.envoy.clusters import cluster
from sluice.launcher.settings import SuiteSettings

ADMIN_CLUSTER = "envoy_admin"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"  # noqa: E501
_ROUTER_FILTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
PATHS = ("/ready", "/stats/prometheus")


def _route(path: str) -> dict[str, Any]:
    return {
        "match": {
            "path": path,
            "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
        },
        "route": {"cluster": ADMIN_CLUSTER, "timeout": "5s"},
    }


def stats_listener(
    settings: SuiteSettings, admin_host: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The listener on `envoy.host:envoy.stats_port` and the cluster of the admin port."""
    envoy = settings.envoy
    listener = {
        "name": "stats",
        "address": {"socket_address": {"address": envoy.host, "port_value": envoy.stats_port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _HCM,
                            "stat_prefix": "stats",
                            "route_config": {
                                "name": "stats",
                                "virtual_hosts": [
                                    {
                                        "name": "stats",
                                        "domains": ["*"],
                                        "routes": [
                                            *(_route(path) for path in PATHS),
                                            {
                                                "match": {"prefix": "/"},
                                                "direct_response": {"status": 404},
                                            },
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": _ROUTER_FILTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
    return listener, cluster(ADMIN_CLUSTER, admin_host, envoy.admin_port)
