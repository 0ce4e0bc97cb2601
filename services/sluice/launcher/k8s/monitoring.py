"""What the monitoring stack of a cluster needs from the suite: a PodMonitor scraping
every part (Prometheus Operator) with each Rollout pod's
ReplicaSet as its `pool`, the alert and recording rules of
deploy/prometheus/rules as PrometheusRules, the Grafana dashboards of deploy/grafana as
ConfigMaps for Grafana's dashboard sidecar, and the prometheus-adapter rules that serve
the router's autoscaling metrics (policies.custom_metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluice.core.config import ConfigError
from sluice.launcher.k8s.meta import Manifest, labels, metadata
from sluice.launcher.k8s.policies import QUEUE_DEPTH_METRIC, TTFT_P95_METRIC
from sluice.launcher.k8s.values import K8sValues

MONITORING = "monitoring.coreos.com/v1"
ADAPTER_CONFIG_MAP = "sluice-prometheus-adapter-rules"
_COMPONENT = "__meta_kubernetes_pod_label_app_kubernetes_io_component"
_TEMPLATE_HASH = "__meta_kubernetes_pod_label_rollouts_pod_template_hash"


def _meta(values: K8sValues, name: str, namespace: str | None = None) -> Manifest:
    meta = metadata(values, "monitoring", name)
    meta["labels"] |= values.prometheus.resource_labels
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def pod_monitor(values: K8sValues) -> Manifest:
    """Scrape every part's metrics port and Envoy's stats, per pod: the canary gates
    select pods by name, so series need the `pod` and `namespace` labels a PodMonitor
    adds. `job` is rewritten to what the rules expect (deploy/prometheus/prometheus.yml:
    sluice-<part>, envoy)."""
    return {
        "apiVersion": MONITORING,
        "kind": "PodMonitor",
        "metadata": _meta(values, "sluice"),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "sluice"}},
            "namespaceSelector": {"matchNames": [values.namespace]},
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "interval": "15s",
                    "relabelings": [
                        {
                            "sourceLabels": [_COMPONENT],
                            "targetLabel": "job",
                            "replacement": "sluice-$1",
                        },
                        # The canary gates of launcher/rollout/gates.py compare pools:
                        # a Rollout's pods are one pool per ReplicaSet (no label on
                        # other pods: the regex needs a hash).
                        {
                            "sourceLabels": ["__meta_kubernetes_namespace", _TEMPLATE_HASH],
                            "separator": "/",
                            "regex": "(.+/.+)",
                            "targetLabel": "pool",
                            "replacement": "$1",
                        },
                    ],
                },
                {
                    "port": "stats",
                    "path": "/stats/prometheus",
                    "interval": "15s",
                    "relabelings": [{"targetLabel": "job", "replacement": "envoy"}],
                },
            ],
        },
    }


def _rule_files(values: K8sValues, base: Path) -> list[Path]:
    directory = (base / values.prometheus.rules_dir).resolve()
    files = sorted(directory.glob("*.yml")) + sorted(directory.glob("*.yaml"))
    if not files:
        raise ConfigError(f"prometheus.rules_dir: no rule files in {directory}")
    return [f for f in files if f.name not in values.prometheus.skip_rule_files]


def prometheus_rules(values: K8sValues, base: Path) -> list[Manifest]:
    """One PrometheusRule per rule file, its groups unchanged (promtool tests them in
    deploy/prometheus/tests)."""
    rules = []
    for path in _rule_files(values, base):
        groups: Any = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("groups")
        if not isinstance(groups, list) or not groups:
            raise ConfigError(f"{path}: a rule file must hold a non-empty `groups` list")
        stem = path.name.split(".")[0]
        rules.append(
            {
                "apiVersion": MONITORING,
                "kind": "PrometheusRule",
                "metadata": _meta(values, f"sluice-{stem}"),
                "spec": {"groups": groups},
            }
        )
    return rules


def dashboards(values: K8sValues, base: Path) -> list[Manifest]:
    """One ConfigMap per dashboard JSON, labelled for Grafana's dashboard sidecar."""
    grafana = values.grafana
    directory = (base / grafana.dashboards_dir).resolve()
    files = sorted(directory.glob("*.json"))
    if not files:
        raise ConfigError(f"grafana.dashboards_dir: no dashboards in {directory}")
    maps = []
    for path in files:
        meta = metadata(values, "dashboards", f"sluice-dashboard-{path.stem}")
        meta["namespace"] = grafana.namespace
        meta["labels"] = labels(values, "dashboards") | grafana.labels
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": meta,
                "data": {path.name: path.read_text(encoding="utf-8")},
            }
        )
    return maps


_PER_POD = {
    "namespace": {"resource": "namespace"},
    "pod": {"resource": "pod"},
}


def adapter_rules(values: K8sValues) -> dict[str, Any]:
    """prometheus-adapter's `rules` for the router's two autoscaling metrics, per pod:
    the queue depth gauge summed over back ends and classes, and the TTFT p95 from the
    histogram over `custom_metrics.window`."""
    window = values.custom_metrics.window
    return {
        "rules": [
            {
                "seriesQuery": f'{QUEUE_DEPTH_METRIC}{{namespace!="",pod!=""}}',
                "resources": {"overrides": _PER_POD},
                "name": {"matches": f"^{QUEUE_DEPTH_METRIC}$", "as": QUEUE_DEPTH_METRIC},
                "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
            },
            {
                "seriesQuery": (
                    'sluice_router_time_to_first_token_seconds_bucket{namespace!="",pod!=""}'
                ),
                "resources": {"overrides": _PER_POD},
                "name": {
                    "matches": "^sluice_router_time_to_first_token_seconds_bucket$",
                    "as": TTFT_P95_METRIC,
                },
                "metricsQuery": (
                    "histogram_quantile(0.95, sum(rate(<<.Series>>{<<.LabelMatchers>>}"
                    f"[{window}])) by (le, <<.GroupBy>>))"
                ),
            },
        ]
    }


def adapter_config_map(values: K8sValues) -> Manifest:
    """The adapter rules as a ConfigMap in the adapter's namespace: merge its `rules`
    into prometheus-adapter's configuration (its Helm chart's `rules.custom`), or point
    the adapter's --config at it (docs/kubernetes.md, "Scaling")."""
    meta = _meta(values, ADAPTER_CONFIG_MAP, values.prometheus.adapter_namespace)
    text = yaml.safe_dump(adapter_rules(values), sort_keys=False, width=100)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"config.yaml": text},
    }
