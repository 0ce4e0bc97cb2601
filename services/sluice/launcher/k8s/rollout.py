"""The router/provider pool's canaries with Argo Rollouts: the steps of the values
(5 -> 25 -> 50 -> 100 % by default), each held while an AnalysisTemplate measures the
canary pods in Prometheus; a failed gate aborts the rollout and scales the canary away.

Gates:
- router: the gates of `sluice rollout canary` (launcher/rollout/gates.py), canary pods
  against stable pods, with the suite's `rollout` thresholds: one design on the host and
  in a cluster. The PodMonitor (k8s/monitoring.py) turns each pod's
  rollouts-pod-template-hash into the `pool` label the gates select on;
- provider (thresholds in the values' `rollout.analysis`): the server-error ratio of its
  client RPCs on its canary pods (launcher/sli.py: health checks left out, the SLI's
  codes), and p95 stream duration on its canary pods
  relative to its stable pods (a stream lasts as long as its answer, so only a comparison
  says the new pods are slower).
"""

from __future__ import annotations

from sluice.launcher import sli
from sluice.launcher.k8s.meta import Manifest, metadata, selector
from sluice.launcher.k8s.suite import ClusterSuite, name_of
from sluice.launcher.k8s.values import K8sValues
from sluice.launcher.k8s.workloads import pod_template
from sluice.launcher.rollout import gates as host_gates
from sluice.launcher.rollout.settings import RolloutSettings

# The gRPC codes counted as the server's failures (the SLI's, launcher/sli.py).
SERVER_ERROR_CODES = sli.SERVER_ERRORS
# Pods of a ReplicaSet of the Rollout are named <rollout>-<pod-template-hash>-<suffix>.
_PODS = 'namespace="{{{{args.namespace}}}}",pod=~"{rollout}-{{{{args.{hash}}}}}-.*"'


def analysis_name(part: str) -> str:
    """The AnalysisTemplate of a part's canary."""
    return f"{name_of(part)}-canary"


def _pods(part: str, which: str = "canary-hash") -> str:
    return _PODS.format(rollout=name_of(part), hash=which)


def error_ratio_query(part: str = "router", window: str = "2m") -> str:
    """Server-side errors per client RPC of the part on its canary's pods (0 without
    errors); the kubelet's health probes are no client's."""
    pods = _pods(part)
    rpcs = f'sluice_rpc_requests_total{{service="{part}",{sli.CLIENT_RPCS},{pods}}}'
    errors = (
        f'sluice_rpc_requests_total{{service="{part}",{sli.CLIENT_RPCS},'
        f'code=~"{SERVER_ERROR_CODES}",{pods}}}'
    )
    return f"(sum(rate({errors}[{window}])) or vector(0)) / sum(rate({rpcs}[{window}]))"


def stream_latency_ratio_query(window: str = "2m") -> str:
    """p95 of the provider's Stream durations on its canary pods over its stable pods'."""

    def p95(which: str) -> str:
        buckets = (
            'sluice_rpc_duration_seconds_bucket{service="provider",method=~".*/Stream",'
            f"{_pods('provider', which)}}}"
        )
        return f"histogram_quantile(0.95, sum by (le) (rate({buckets}[{window}])))"

    return f"{p95('canary-hash')} / {p95('stable-hash')}"


CANARY_POOL = "{{args.namespace}}/{{args.canary-hash}}"
STABLE_POOL = "{{args.namespace}}/{{args.stable-hash}}"
"""The `pool` label values of the canary and stable pods: namespace and pod-template
hash, as the PodMonitor writes them (two namespaces may run the same pod template)."""


def router_gate_queries(settings: RolloutSettings, window: str) -> dict[str, str]:
    """Each gate of launcher/rollout/gates.py as one query: how far the canary pods are
    past the gate's limit relative to the stable pods (at most 0 passes), no sample
    while the canary answered fewer than `min_requests` within `window`."""
    requests = host_gates.requests_promql(CANARY_POOL, window)
    queries = {}
    for gate in host_gates.gate_names(settings):
        excess = host_gates.excess_promql(
            gate,
            host_gates.promql(gate, CANARY_POOL, window, settings=settings),
            host_gates.promql(gate, STABLE_POOL, window, settings=settings),
            settings,
        )
        queries[gate] = host_gates.judged_promql(excess, requests, settings)
    return queries


def _router_metrics(values: K8sValues, settings: RolloutSettings) -> list[Manifest]:
    gates = values.rollout.analysis
    metrics = []
    for gate, query in router_gate_queries(settings, gates.window).items():
        metrics.append(
            {
                "name": gate.replace("_", "-"),
                "interval": gates.interval,
                # The first measurement covers a whole window of canary traffic.
                "initialDelay": gates.window,
                "failureLimit": gates.failure_limit,
                # Too few canary requests gives no sample: neither condition holds, so
                # the measurement is inconclusive (the host holds the step instead);
                # past `inconclusive_limit` of them Argo pauses the rollout for a person.
                "inconclusiveLimit": gates.inconclusive_limit,
                "successCondition": "len(result) > 0 && result[0] <= 0",
                "failureCondition": "len(result) > 0 && result[0] > 0",
                "provider": {"prometheus": {"address": values.prometheus.url, "query": query}},
            }
        )
    return metrics


def analysis_template(
    values: K8sValues, part: str = "router", settings: RolloutSettings | None = None
) -> Manifest:
    """A part's canary gates (Prometheus queries with success conditions); the router's
    thresholds are `settings` (the suite's `rollout` section)."""
    if part == "router":
        args: list[Manifest] = [
            {"name": "canary-hash"},
            {"name": "stable-hash"},
            {"name": "namespace"},
        ]
        metrics = _router_metrics(values, settings or RolloutSettings())
    else:
        args, metrics = _provider_gates(values, part)
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": metadata(values, part, analysis_name(part)),
        "spec": {"args": args, "metrics": metrics},
    }


def _provider_gates(values: K8sValues, part: str) -> tuple[list[Manifest], list[Manifest]]:
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

    metrics = [
        metric("server-error-ratio", error_ratio_query(part, gates.window), gates.max_error_ratio),
        metric(
            "stream-p95-ratio", stream_latency_ratio_query(gates.window), gates.max_latency_ratio
        ),
    ]
    args = [{"name": "canary-hash"}, {"name": "stable-hash"}, {"name": "namespace"}]
    return args, metrics


def rollout(values: K8sValues, suite: ClusterSuite, part: str = "router") -> Manifest:
    """A pool part as an Argo Rollouts canary (the weight is the canary's share of pods:
    gRPC clients balance per call over the headless Service's pods)."""
    steps: list[Manifest] = []
    for weight in values.rollout.steps:
        steps.append({"setWeight": weight})
        if weight < 100:
            steps.append({"pause": {"duration": values.rollout.pause}})
    args: list[Manifest] = [
        {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
        {"name": "stable-hash", "valueFrom": {"podTemplateHashValue": "Stable"}},
        {"name": "namespace", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": metadata(values, part),
        "spec": {
            "replicas": values.parts[part].replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(part)},
            "template": pod_template(values, suite, part),
            "strategy": {
                "canary": {
                    "maxSurge": "25%",
                    "maxUnavailable": 0,
                    # Measured from the first weight on; a failed gate aborts the
                    # rollout, and the stable pods take all traffic again.
                    "analysis": {
                        "templates": [{"templateName": analysis_name(part)}],
                        "startingStep": 1,
                        "args": args,
                    },
                    "abortScaleDownDelaySeconds": 30,
                    "steps": steps,
                }
            },
        },
    }
