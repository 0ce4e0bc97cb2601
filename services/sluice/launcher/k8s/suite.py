"""The suite's settings as the cluster runs them: the values' `suite` sections with every
bind host opened and every address turned into a Service's DNS name."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sluice.core.config import ServerSettings, deep_merge
from sluice.launcher.k8s.values import K8sValues
from sluice.launcher.settings import SuiteSettings, load_suite

CONFIG_DIR = "/etc/sluice/config"
CONFIG_FILE = f"{CONFIG_DIR}/sluice.yaml"
"""Where the ConfigMap's suite file is mounted in every pod (SLUICE_CONFIG). Secrets
and certificates are mounted beside it, never inside: a configMap volume is read-only,
so the runtime cannot create another volume's mount point in it."""
VALKEY_PORT = 6379
ENVOY_STATS_PORT = 9902
"""Envoy's stats listener in a pod, unless the suite sets envoy.stats_port."""
CERTS_DIR = "/etc/sluice/certs"
"""Where a part's identity Secret is mounted (security.certs_dir) under mtls."""


def name_of(part: str) -> str:
    """Resource name of a part (Deployment, Service, ...)."""
    return f"sluice-{part}"


def dns_name(part: str, namespace: str) -> str:
    """The part's Service as a fully qualified name (no search-path lookups per call)."""
    return f"{name_of(part)}.{namespace}.svc.cluster.local"


@contextlib.contextmanager
def _without_sluice_env() -> Iterator[None]:
    # The rendered manifests depend on the values file only, never on the environment of
    # whoever renders them (SLUICE_* variables override settings).
    saved = {k: v for k, v in os.environ.items() if k.startswith("SLUICE_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def load_quietly(data: dict[str, Any]) -> SuiteSettings:
    """Validated suite settings from a mapping, ignoring SLUICE_* variables."""
    with _without_sluice_env():
        return load_suite(data=data)


def plaintext_unless_set(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with `security.mtls: false` unless the values set it: the kubelet's gRPC
    probes cannot present a client certificate, so an mTLS pod would never turn ready
    (docs/kubernetes.md, "Mutual TLS"). Explicit, so the suite file says it."""
    if "mtls" in (config.get("security") or {}):
        return config
    config.setdefault("security", {})["mtls"] = False
    return config


@dataclass(frozen=True)
class ClusterSuite:
    """The suite file every pod mounts, and its validated settings."""

    config: dict[str, Any]
    settings: SuiteSettings

    def server(self, part: str) -> ServerSettings:
        """gRPC and metrics listener of a service part."""
        server: ServerSettings = getattr(self.settings, part).server
        return server


def cluster_suite(values: K8sValues) -> ClusterSuite:
    """The values' suite settings with cluster addresses; raises ConfigError when invalid."""
    given = load_quietly(values.suite)  # the ports the operator chose (or the defaults)
    ns = values.namespace
    any_address = "0.0.0.0"  # noqa: S104  # nosec B104 - pods listen on their own IP
    limiter, provider, telemetry = (
        given.limiter.server,
        given.provider.server,
        given.telemetry.server,
    )
    overrides: dict[str, Any] = {
        "tracing": {"endpoint": f"{dns_name('telemetry', ns)}:{telemetry.port}"},
        "router": {
            "server": {"host": any_address},
            "http_api": {"host": any_address},
            # Headless Services: gRPC resolves every pod and balances per call (round robin).
            "limiter_address": f"dns:///{dns_name('limiter', ns)}:{limiter.port}",
            "provider_address": f"dns:///{dns_name('provider', ns)}:{provider.port}",
        },
        "limiter": {"server": {"host": any_address}},
        "provider": {"server": {"host": any_address}},
        "telemetry": {"server": {"host": any_address}},
        # Probes and Prometheus reach Envoy's /ready and stats through its stats
        # listener; the admin interface itself stays on loopback.
        "envoy": {"host": any_address, "stats_port": given.envoy.stats_port or ENVOY_STATS_PORT},
    }
    if values.valkey.enabled:
        overrides["limiter"] |= {
            "backend": "redis",
            "redis": {
                "url": f"redis://{dns_name('valkey', ns)}:{VALKEY_PORT}/0",
                "replicas": values.parts["limiter"].replicas,
            },
        }
    if values.mtls.enabled:
        # Each pod mounts its identity's Secret there (certificates.py).
        overrides["security"] = {"mtls": True, "certs_dir": CERTS_DIR}
    config = deep_merge(values.suite, overrides)
    return ClusterSuite(config=config, settings=load_quietly(plaintext_unless_set(config)))
