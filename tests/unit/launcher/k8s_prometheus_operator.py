"""Hand-written schemas of the Prometheus Operator kinds, for what the vendored CRD lacks.

The only Prometheus Operator CRD schema a reachable registry carries raw is an
unversioned snapshot of its master branch (deploy/k8s/crds/prometheus-operator-master/,
older than the v1 `Duration` pattern, `keep_firing_for` and a rule group's `limit`).
These schemas, written from the monitoring.coreos.com/v1 CRD fields of current releases
and limited to the fields the renderer may write, keep checking those constraints; the
rendered PodMonitor and PrometheusRules must pass both (test_k8s_custom_resources.py).
A field added to the renderer must be added here from the CRD.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]
_STRING: Schema = {"type": "string"}
_STRINGS: Schema = {"type": "array", "items": _STRING}
_LABELS: Schema = {"type": "object", "additionalProperties": _STRING}
_METADATA: Schema = {
    "type": "object",
    "required": ["name", "namespace"],
    "additionalProperties": False,
    "properties": {"name": _STRING, "namespace": _STRING, "labels": _LABELS},
}


def _object(properties: Schema, required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": required or [],
    }


def _resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return _object(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


_SELECTOR = _object({"matchLabels": _LABELS, "matchExpressions": {"type": "array"}})
# RelabelConfig (monitoring.coreos.com/v1): `sourceLabels`, `separator`, `targetLabel`,
# `regex`, `modulus`, `replacement`, `action`.
_RELABEL = _object(
    {
        "sourceLabels": _STRINGS,
        "separator": _STRING,
        "targetLabel": _STRING,
        "regex": _STRING,
        "modulus": {"type": "integer"},
        "replacement": _STRING,
        "action": {
            "enum": [
                "replace",
                "keep",
                "drop",
                "hashmod",
                "labelmap",
                "labeldrop",
                "labelkeep",
                "lowercase",
                "uppercase",
                "keepequal",
                "dropequal",
            ]
        },
    }
)
# monitoring.coreos.com/v1 Duration (Prometheus' duration syntax).
_DURATION_PATTERN = (
    "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_DURATION: Schema = {"type": "string", "pattern": _DURATION_PATTERN}
POD_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    _object(
        {
            "selector": _SELECTOR,
            "namespaceSelector": _object({"any": {"type": "boolean"}, "matchNames": _STRINGS}),
            "jobLabel": _STRING,
            "podMetricsEndpoints": {
                "type": "array",
                "items": _object(
                    {
                        "port": _STRING,
                        "path": _STRING,
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "relabelings": {"type": "array", "items": _RELABEL},
                        "metricRelabelings": {"type": "array", "items": _RELABEL},
                    }
                ),
            },
        },
        ["selector"],
    ),
)
_RULE = {
    **_object(
        {
            "record": _STRING,
            "alert": _STRING,
            "expr": {"type": ["string", "integer"]},
            "for": _DURATION,
            "keep_firing_for": _DURATION,
            "labels": _LABELS,
            "annotations": _LABELS,
        },
        ["expr"],
    ),
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
}
PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _object(
        {
            "groups": {
                "type": "array",
                "items": _object(
                    {
                        "name": _STRING,
                        "interval": _DURATION,
                        "limit": {"type": "integer"},
                        "partial_response_strategy": _STRING,
                        "rules": {"type": "array", "items": _RULE},
                    },
                    ["name"],
                ),
            }
        }
    ),
)
SCHEMAS = {"PodMonitor": POD_MONITOR, "PrometheusRule": PROMETHEUS_RULE}
