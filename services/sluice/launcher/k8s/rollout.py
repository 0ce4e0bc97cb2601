"""The router's canary with Argo Rollouts: the steps of the values (5 -> 25 -> 50 -> 100 %
by default), each held while an AnalysisTemplate measures the canary pods' server-error
ratio and time-to-first-token p95 in Prometheus; a failed gate aborts the rollout and
scales the canary away."""

from __future__ import annotations

from sluice.launcher.k8s.suite import ClusterSuite
from sluice.launcher.k8s.values import K8sValues
from sluice.launcher.k8s.workloads import Manifest, metadata, pod_template, selector

ANALYSIS = "sluice-router-canary"
# The gRPC codes counted as the server's failures, as in the router's SLO recording
# rules (deploy/prometheus/rules/sluice.rules.yml).
SERVER_ERROR_CODES = "UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS"
# Pods of the canary ReplicaSet are named <rollout>-<pod-template-hash>-<suffix>.
_CANARY_PODS = 'namespace="{{args.namespace}}",pod=~"sluice-router-{{args.canary-hash}}-.*"'


def error_ratio_query(window: str = "2m") -> str:
    """Server-side errors per router RPC on the canary's pods (0 without errors)."""
    rpcs = f'sluice_rpc_requests_total{{service="router",{_CANARY_PODS}}}'
    errors = (
        f'sluice_rpc_requests_total{{service="router",code=~"{SERVER_ERROR_CODES}",{_CANARY_PODS}}}'
    )
    return f"(sum(rate({errors}[{window}])) or vector(0)) / sum(rate({rpcs}[{window}]))"


def ttft_p95_query(window: str = "2m") -> str:
    """Time-to-first-token p95 of the canary's pods, in seconds."""
    buckets = f"sluice_router_time_to_first_token_seconds_bucket{{{_CANARY_PODS}}}"
    return f"histogram_quantile(0.95, sum by (le) (rate({buckets}[{window}])))"


def analysis_template(values: K8sValues) -> Manifest:
    """The canary's gates (Prometheus queries with success conditions)."""
    gates = values.rollout.analysis
    address = values.prometheus.url

    def metric(name: str, query: str, limit: float) -> Manifest:
        return {
            "name": name,
            "interval": gates.interval,
            "failureLimit": gates.failure_limit,
            # No traffic yet (no series, or 0/0 = NaN) is not a failure.
            "successCondition": (f"len(result) == 0 || isNaN(result[0]) || result[0] <= {limit:g}"),
            "provider": {"prometheus": {"address": address, "query": query}},
        }

    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": metadata(values, "router", ANALYSIS),
        "spec": {
            "args": [{"name": "canary-hash"}, {"name": "namespace"}],
            "metrics": [
                metric("server-error-ratio", error_ratio_query(), gates.max_error_ratio),
                metric("ttft-p95", ttft_p95_query(), gates.max_ttft_p95_s),
            ],
        },
    }


def rollout(values: K8sValues, suite: ClusterSuite) -> Manifest:
    """The router as an Argo Rollouts canary (the weight is the canary's share of pods:
    gRPC clients balance per call over the headless Service's pods)."""
    steps: list[Manifest] = []
    for weight in values.rollout.steps:
        steps.append({"setWeight": weight})
        if weight < 100:
            steps.append({"pause": {"duration": values.rollout.pause}})
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": metadata(values, "router"),
        "spec": {
            "replicas": values.parts["router"].replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector("router")},
            "template": pod_template(values, suite, "router"),
            "strategy": {
                "canary": {
                    "maxSurge": "25%",
                    "maxUnavailable": 0,
                    # Measured from the first weight on; a failed gate aborts the
                    # rollout, and the stable pods take all traffic again.
                    "analysis": {
                        "templates": [{"templateName": ANALYSIS}],
                        "startingStep": 1,
                        "args": [
                            {
                                "name": "canary-hash",
                                "valueFrom": {"podTemplateHashValue": "Latest"},
                            },
                            {
                                "name": "namespace",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                            },
                        ],
                    },
                    "abortScaleDownDelaySeconds": 30,
                    "steps": steps,
                }
            },
        },
    }
