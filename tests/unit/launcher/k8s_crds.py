"""Schemas of the custom resources `sluice k8s render` writes, for jsonschema.

Written by hand from the fields each CRD's openAPIV3Schema defines (field names and
types as the projects' CRDs declare them: prometheus-operator's monitoring.coreos.com/v1
PodMonitor and PrometheusRule, cert-manager's cert-manager.io/v1 Certificate), limited to
the fields the renderer may write, and strict: `additionalProperties: false` at every
level, like `kubectl apply --validate=strict`, which refuses fields the CRD does not
declare. The CRD files themselves are not vendored (docs/kubernetes.md, "What was and was
not verified"); a field added to the renderer must be added here from the CRD.
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
# cert-manager.io/v1 Certificate: spec.secretName and spec.issuerRef are required.
CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    _object(
        {
            "secretName": _STRING,
            "commonName": {"type": "string", "maxLength": 64},
            "dnsNames": _STRINGS,
            "uris": _STRINGS,
            "ipAddresses": _STRINGS,
            "duration": _STRING,
            "renewBefore": _STRING,
            "isCA": {"type": "boolean"},
            "usages": {
                "type": "array",
                "items": {
                    "enum": [
                        "signing",
                        "digital signature",
                        "content commitment",
                        "key encipherment",
                        "key agreement",
                        "data encipherment",
                        "cert sign",
                        "crl sign",
                        "encipher only",
                        "decipher only",
                        "any",
                        "server auth",
                        "client auth",
                        "code signing",
                        "email protection",
                        "s/mime",
                        "ipsec end system",
                        "ipsec tunnel",
                        "ipsec user",
                        "timestamping",
                        "ocsp signing",
                        "microsoft sgc",
                        "netscape sgc",
                    ]
                },
            },
            "privateKey": _object(
                {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "encoding": {"enum": ["PKCS1", "PKCS8"]},
                    "size": {"type": "integer"},
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                }
            ),
            "issuerRef": _object({"name": _STRING, "kind": _STRING, "group": _STRING}, ["name"]),
        },
        ["secretName", "issuerRef"],
    ),
)
SCHEMAS = {"PodMonitor": POD_MONITOR, "PrometheusRule": PROMETHEUS_RULE, "Certificate": CERTIFICATE}
