"""Names and labels every rendered resource shares."""

from __future__ import annotations

from typing import Any

from sluice.launcher.k8s.suite import name_of
from sluice.launcher.k8s.values import K8sValues
from sluice.launcher.version import package_version

Manifest = dict[str, Any]


def labels(values: K8sValues, part: str) -> dict[str, str]:
    """Recommended labels of one part's resources."""
    return {
        "app.kubernetes.io/name": "sluice",
        "app.kubernetes.io/component": part,
        "app.kubernetes.io/part-of": "sluice",
        "app.kubernetes.io/version": package_version(),
        "app.kubernetes.io/managed-by": "sluice-k8s-render",
    }


def selector(part: str) -> dict[str, str]:
    """The labels that pick one part's pods (stable across versions)."""
    return {"app.kubernetes.io/name": "sluice", "app.kubernetes.io/component": part}


def metadata(values: K8sValues, part: str, name: str | None = None) -> Manifest:
    """Name, namespace and labels of a part's resource."""
    return {
        "name": name or name_of(part),
        "namespace": values.namespace,
        "labels": labels(values, part),
    }
