"""The whole suite as one Pod, for `podman kube play` on a machine without a cluster.

The same containers as the Deployments (image, `sluice serve PART` / `sluice envoy`,
security context, probes, writable paths), but sharing one network namespace, so the
parts reach each other on 127.0.0.1 as under `sluice up`, and without Secrets: the suite
file's keys apply. Only Envoy's listener and the telemetry query port bind all addresses
(they are the ports a host publishes)."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from sluice.core.config import deep_merge
from sluice.launcher.k8s.meta import Manifest, metadata
from sluice.launcher.k8s.suite import (
    ENVOY_STATS_PORT,
    ClusterSuite,
    load_quietly,
    plaintext_unless_set,
)
from sluice.launcher.k8s.values import PARTS, K8sValues
from sluice.launcher.k8s.workloads import CONFIG_MAP, part_container, pod_spec, writable_volumes

POD = "sluice-suite"
PUBLISHED = {"envoy": "http", "telemetry": "grpc"}
"""The ports a host publishes: the edge, and telemetry's query API (traces)."""
LOOPBACK = "127.0.0.1"


def local_suite(values: K8sValues) -> ClusterSuite:
    """The values' suite settings on loopback, the published listeners on all addresses."""
    any_address = "0.0.0.0"  # noqa: S104  # nosec B104 - inside the pod's own namespace
    config: dict[str, Any] = deep_merge(
        values.suite,
        {
            "envoy": {"host": any_address, "stats_port": ENVOY_STATS_PORT},
            "telemetry": {"server": {"host": any_address}},
        },
    )
    return ClusterSuite(config=config, settings=load_quietly(plaintext_unless_set(config)))


def suite_pod(values: K8sValues) -> list[Manifest]:
    """A ConfigMap with the suite file, and one Pod running every part."""
    suite = local_suite(values)
    containers = []
    for part in PARTS:
        container = part_container(values, suite, part)
        container["env"] = [e for e in container["env"] if "valueFrom" not in e]
        if part == "envoy":  # loopback: the suite file's addresses, not the Services'
            container["env"] = [e for e in container["env"] if e["name"] == "SLUICE_CONFIG"]
        container["volumeMounts"] = [
            m for m in container["volumeMounts"] if m["name"] not in {"upstream", "tls"}
        ]
        _publish_only(container, PUBLISHED.get(part))
        containers.append(container)
    spec = pod_spec(values, suite, "router", containers[0], max_grace(suite))
    _, mounts = writable_volumes()
    for container in containers[1:]:
        container["volumeMounts"] = copy.deepcopy(mounts) + container["volumeMounts"]
    spec["containers"] = containers
    spec["volumes"] = [v for v in spec["volumes"] if "secret" not in v]
    del spec["topologySpreadConstraints"]
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(values, "suite", CONFIG_MAP),
            "data": {"sluice.yaml": yaml.safe_dump(suite.config, sort_keys=True, width=100)},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                **metadata(values, "suite", POD),
                # The Pod is for `podman kube play` on one machine: hostPort is how the
                # host reaches the edge, and it is bound to loopback only.
                "annotations": {
                    "checkov.io/skip1": "CKV_K8S_26=podman publishes the edge on 127.0.0.1"
                },
            },
            "spec": spec,
        },
    ]


def _publish_only(container: Manifest, port_name: str | None) -> None:
    """Keep only the container port the host publishes, on loopback. `podman kube play`
    (4.3) publishes every declared containerPort on all host addresses under its own
    number; the parts reach each other inside the pod without any declaration."""
    numbers = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        action = container.get(probe, {}).get("httpGet")
        if action is not None and isinstance(action["port"], str):
            action["port"] = numbers[action["port"]]  # its name is no longer declared
    kept = [
        {**port, "hostPort": port["containerPort"], "hostIP": LOOPBACK}
        for port in container.pop("ports")
        if port["name"] == port_name
    ]
    if kept:
        container["ports"] = kept


def max_grace(suite: ClusterSuite) -> float:
    """The longest drain of any part (the pod's grace covers all of them)."""
    services = [suite.server(p).shutdown_grace_s for p in PARTS if p != "envoy"]
    return max(suite.settings.envoy.drain_time_s + 1, *services)
