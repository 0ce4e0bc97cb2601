"""NetworkPolicies for the trust graph's edges only, PodDisruptionBudgets, and
HorizontalPodAutoscalers."""

from __future__ import annotations

from sluice.launcher.k8s.meta import Manifest, metadata, selector
from sluice.launcher.k8s.suite import VALKEY_PORT, ClusterSuite
from sluice.launcher.k8s.values import PARTS, POOL, K8sValues

QUEUE_DEPTH_METRIC = "sluice_router_queue_depth"
"""Custom metric: requests waiting for admission per router pod (the gauge itself)."""
TTFT_P95_METRIC = "sluice_router_ttft_p95_seconds"
"""Custom metric: time-to-first-token p95 per router pod (from the histogram)."""

# Who may open connections to whom (docs/kubernetes.md, "Network policies"). Everything
# else is refused by the namespace's default-deny policy.
CALLERS: dict[str, tuple[str, ...]] = {
    "router": ("envoy",),
    "limiter": ("router", "envoy"),  # envoy: the edge rate limit filter (when enabled)
    "provider": ("router",),
    "telemetry": ("router", "limiter", "provider", "envoy"),  # OTLP spans
    "valkey": ("limiter",),
}


def _peer(part: str) -> dict[str, object]:
    return {"podSelector": {"matchLabels": selector(part)}}


def _prometheus(values: K8sValues) -> dict[str, object]:
    return {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": values.prometheus.namespace}
        },
        "podSelector": {"matchLabels": values.prometheus.pod_labels},
    }


def _policy(values: K8sValues, part: str, ingress: list[Manifest]) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(values, part, f"sluice-{part}-ingress"),
        "spec": {
            "podSelector": {"matchLabels": selector(part)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def network_policies(values: K8sValues, suite: ClusterSuite) -> list[Manifest]:
    """Default deny for the namespace, then one policy per part allowing its callers."""
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(values, "network", "sluice-default-deny-ingress"),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    policies = [deny]
    for part in ("router", "limiter", "provider", "telemetry"):
        server = suite.server(part)
        grpc_ports: list[dict[str, object]] = [{"protocol": "TCP", "port": server.port}]
        if part == "router" and suite.settings.router.http_api.enabled:
            grpc_ports.append({"protocol": "TCP", "port": suite.settings.router.http_api.port})
        callers = CALLERS[part]
        if part == "limiter" and not suite.settings.envoy.rate_limit.enabled:
            callers = tuple(c for c in callers if c != "envoy")
        ingress: list[Manifest] = [
            {"from": [_peer(caller) for caller in callers], "ports": grpc_ports},
            {
                "from": [_prometheus(values)],
                "ports": [{"protocol": "TCP", "port": server.metrics_port}],
            },
        ]
        policies.append(_policy(values, part, ingress))
    envoy = suite.settings.envoy
    policies.append(
        _policy(
            values,
            "envoy",
            [
                # The edge: clients arrive from anywhere (the ingress or load balancer).
                {"ports": [{"protocol": "TCP", "port": envoy.port}]},
                # Envoy's own metrics at /stats/prometheus on its stats listener (the
                # admin interface itself only listens on the pod's loopback).
                {
                    "from": [_prometheus(values)],
                    "ports": [{"protocol": "TCP", "port": envoy.stats_port}],
                },
            ],
        )
    )
    if values.valkey.enabled:
        policies.append(
            _policy(
                values,
                "valkey",
                [
                    {
                        "from": [_peer(c) for c in CALLERS["valkey"]],
                        "ports": [{"protocol": "TCP", "port": VALKEY_PORT}],
                    }
                ],
            )
        )
    return policies


def disruption_budgets(values: K8sValues) -> list[Manifest]:
    """Keep at least one pod of every part through voluntary disruptions (node drains);
    a single-replica part may be moved (a budget of 0 would block every drain)."""
    budgets = []
    for part in PARTS:
        replicas = values.parts[part].replicas
        limit = {"minAvailable": 1} if replicas > 1 else {"maxUnavailable": 1}
        budgets.append(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": metadata(values, part),
                "spec": {**limit, "selector": {"matchLabels": selector(part)}},
            }
        )
    return budgets


def custom_metrics(values: K8sValues) -> list[Manifest]:
    """The router's own load signals, per pod, from the custom metrics API (served by
    prometheus-adapter with the rules of monitoring.adapter_rules): requests waiting for
    admission and time-to-first-token p95. The HPA scales on whichever asks for most."""
    wanted = values.custom_metrics
    if not wanted.enabled:
        return []

    def pods(metric: str, average: float) -> Manifest:
        return {
            "type": "Pods",
            "pods": {
                "metric": {"name": metric},
                "target": {"type": "AverageValue", "averageValue": quantity(average)},
            },
        }

    return [
        pods(QUEUE_DEPTH_METRIC, wanted.queue_depth_per_pod),
        pods(TTFT_P95_METRIC, wanted.ttft_p95_s),
    ]


def quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as they are, fractions in milli-units."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def autoscalers(values: K8sValues) -> list[Manifest]:
    """CPU autoscaling of every part allowed more than its floor of replicas, plus the
    router's custom metrics."""
    scalers = []
    for part in PARTS:
        sizes = values.parts[part]
        if sizes.max_replicas <= sizes.replicas:
            continue
        target = (
            {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout"}
            if part in POOL
            else {"apiVersion": "apps/v1", "kind": "Deployment"}
        )
        custom = custom_metrics(values) if part == "router" else []
        scalers.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": metadata(values, part),
                "spec": {
                    "scaleTargetRef": {**target, "name": f"sluice-{part}"},
                    "minReplicas": sizes.replicas,
                    "maxReplicas": sizes.max_replicas,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {
                                    "type": "Utilization",
                                    "averageUtilization": sizes.target_cpu_percent,
                                },
                            },
                        },
                        *custom,
                    ],
                    # Streams are long: scale down slowly so drains are rare.
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": 300,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                        }
                    },
                },
            }
        )
    return scalers
