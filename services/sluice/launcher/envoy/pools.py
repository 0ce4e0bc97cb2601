"""Router pools behind Envoy: the router clusters' endpoints from watched files (EDS).

`sluice up` runs the router as one or more *pools* (the baseline, and a candidate while a
rollout runs: docs/deployment.md). Envoy learns the pools' replicas from one endpoints
file per router cluster in `<run_dir>/xds`, replaced atomically (write, then rename into
the watched directory), so traffic shifts without restarting Envoy:

- each endpoint carries `envoy.lb` metadata `pool` (its pool's name) and `live`
  ("true" while its pool takes a share of unpinned traffic);
- its `load_balancing_weight` is its pool's share divided among the pool's replicas;
- a replica being drained is `health_status: DRAINING`: Envoy sends it no new request,
  while the streams it serves run to their end;
- the header `x-sluice-pool: <name>` pins a request to that pool (a smoke test of a pool
  with no share yet, an A/B test): the header_to_metadata filter turns it into the
  subset load balancer's match; without it, requests match `live: "true"`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.launcher.envoy.names import HTTP_API_CLUSTER, ROUTER_CLUSTER

POOL_HEADER = "x-sluice-pool"
"""Pins a request to one pool of routers."""
POOLED_CLUSTERS = (ROUTER_CLUSTER, HTTP_API_CLUSTER)
"""The clusters whose endpoints are the router replicas."""

_HEADER_TO_METADATA = (
    "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
)
_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_WEIGHT_SCALE = 1000
"""Endpoint weight of a pool that takes all traffic (per replica: divided among them)."""


@dataclass(frozen=True)
class Endpoint:
    """One router replica as Envoy sees it."""

    host: str
    grpc_port: int
    http_port: int | None
    pool: str
    share: float
    """The pool's share of unpinned traffic, 0..1."""
    replicas: int
    """Live replicas of the pool (the share is divided among them)."""
    draining: bool = False

    @property
    def live(self) -> bool:
        """Whether the replica takes unpinned traffic."""
        return self.share > 0 and not self.draining

    @property
    def weight(self) -> int:
        """Its load-balancing weight (at least 1, as Envoy requires)."""
        return max(1, round(self.share * _WEIGHT_SCALE / max(1, self.replicas)))


def endpoints_path(xds_dir: Path, cluster: str) -> Path:
    """The endpoints file of one pooled cluster."""
    return xds_dir / f"{cluster}.eds.json"


def _lb_endpoint(endpoint: Endpoint, port: int) -> dict[str, Any]:
    return {
        "endpoint": {"address": {"socket_address": {"address": endpoint.host, "port_value": port}}},
        "load_balancing_weight": endpoint.weight,
        "health_status": "DRAINING" if endpoint.draining else "HEALTHY",
        "metadata": {
            "filter_metadata": {
                "envoy.lb": {"pool": endpoint.pool, "live": "true" if endpoint.live else "false"}
            }
        },
    }


def assignment(cluster: str, endpoints: list[Endpoint], version: int) -> dict[str, Any]:
    """The discovery response (one ClusterLoadAssignment) Envoy reads from the file."""
    lb_endpoints = []
    for endpoint in endpoints:
        port = endpoint.grpc_port if cluster == ROUTER_CLUSTER else endpoint.http_port
        if port is not None:
            lb_endpoints.append(_lb_endpoint(endpoint, port))
    return {
        "version_info": str(version),
        "resources": [
            {
                "@type": _ASSIGNMENT,
                "cluster_name": cluster,
                "endpoints": [{"lb_endpoints": lb_endpoints}],
            }
        ],
    }


def write_endpoints(xds_dir: Path, endpoints: list[Endpoint], version: int) -> None:
    """Replace every pooled cluster's endpoints file atomically (Envoy reloads a file when
    an entry is moved into its watched directory; an in-place write could be read half
    done)."""
    xds_dir.mkdir(parents=True, exist_ok=True)
    for cluster in POOLED_CLUSTERS:
        target = endpoints_path(xds_dir, cluster)
        staging = xds_dir / f".{target.name}.{os.getpid()}.tmp"
        staging.write_text(json.dumps(assignment(cluster, endpoints, version)), encoding="utf-8")
        staging.replace(target)


def _pool_filter() -> dict[str, Any]:
    """`x-sluice-pool: <name>` selects that pool's replicas; no header selects the live
    ones (their weights split the traffic)."""
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": _HEADER_TO_METADATA,
            "request_rules": [
                {
                    "header": POOL_HEADER,
                    "on_header_present": {
                        "metadata_namespace": "envoy.lb",
                        "key": "pool",
                        "type": "STRING",
                    },
                    "on_header_missing": {
                        "metadata_namespace": "envoy.lb",
                        "key": "live",
                        "value": "true",
                        "type": "STRING",
                    },
                    "remove": True,
                }
            ],
        },
    }


def _from_files(cluster: dict[str, Any], xds_dir: Path) -> None:
    cluster.pop("load_assignment", None)
    cluster["type"] = "EDS"
    cluster["eds_cluster_config"] = {
        "eds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": str(endpoints_path(xds_dir, cluster["name"])),
                "watched_directory": {"path": str(xds_dir)},
            },
        }
    }
    # The file is the truth: a replica left out of it is gone, even while it still
    # passes health checks (it is only left out once stopped).
    cluster["ignore_health_on_host_removal"] = True
    cluster["lb_subset_config"] = {
        # A pin to no known pool gets the live replicas, like an unpinned request.
        "fallback_policy": "DEFAULT_SUBSET",
        "default_subset": {"live": "true"},
        "subset_selectors": [{"keys": ["pool"]}, {"keys": ["live"]}],
    }


def pooled(bootstrap: dict[str, Any], xds_dir: Path) -> dict[str, Any]:
    """The bootstrap with the router clusters' endpoints read from `xds_dir` and the
    pool-pinning filter in front of the router filter."""
    xds_dir = xds_dir.resolve()
    # File-based xDS needs the node named.
    bootstrap.setdefault("node", {"id": "sluice-edge", "cluster": "sluice"})
    static = bootstrap["static_resources"]
    for cluster in static["clusters"]:
        if cluster["name"] in POOLED_CLUSTERS:
            _from_files(cluster, xds_dir)
    for listener in static["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                filters = network_filter["typed_config"].get("http_filters")
                if filters:
                    filters.insert(len(filters) - 1, _pool_filter())
    return bootstrap
