"""Deployments, Services and the Valkey StatefulSet: every pod non-root on a read-only root
filesystem with all capabilities dropped, probed over grpc.health.v1, drained on stop."""

from __future__ import annotations

import hashlib
import json
import math

from sluice.core.grpcx.certs import CA_CERT, cert_file, key_file
from sluice.launcher.k8s.certificates import certs_volume
from sluice.launcher.k8s.meta import Manifest, labels, metadata, selector
from sluice.launcher.k8s.suite import (
    CERTS_DIR,
    CONFIG_DIR,
    CONFIG_FILE,
    VALKEY_PORT,
    ClusterSuite,
    dns_name,
    name_of,
)
from sluice.launcher.k8s.values import POOL, K8sValues, PartValues, SizingValues
from sluice.launcher.parts import HEALTH_SERVICES

UID = 10001
"""The image's user (deploy/container/Containerfile)."""
PRE_STOP_S = 5
"""Sleep before SIGTERM so endpoints and Envoy's health checks drop the pod first."""
CONFIG_MAP = "sluice-config"
UPSTREAM_SECRETS_DIR = "/etc/sluice/secrets/upstream"
TLS_DIR = "/etc/sluice/tls"
TMP_DIR = "/tmp"  # noqa: S108  # nosec B108 - each pod's own emptyDir, not a shared /tmp


# -- sizing ---------------------------------------------------------------------------


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def resources(part: PartValues, sizing: SizingValues) -> Manifest:
    """Requests from the sizing rule (docs/kubernetes.md, "Sizing"); limits a factor above.

    A part that carries streams needs streams x tokens/s x CPU per token, and its idle
    memory plus a receive window and the kept answer per stream; its memory limit also
    holds every stream stalled by a client that stopped reading.
    """
    factor = sizing.limit_factor
    if part.scales_with_streams:
        streams = sizing.streams_per_pod
        cpu_m = _round_up(
            streams * sizing.tokens_per_second_per_stream * sizing.cpu_ms_per_token, 50
        )
        memory_mib = _round_up(
            sizing.base_memory_mib + streams * sizing.memory_kib_per_stream / 1024, 16
        )
        stalled_mib = sizing.base_memory_mib + streams * sizing.stalled_memory_kib_per_stream / 1024
        memory_limit_mib = _round_up(max(memory_mib * factor, stalled_mib), 16)
    else:
        cpu_m, memory_mib = part.cpu_request_millicores, part.memory_request_mib
        memory_limit_mib = _round_up(memory_mib * factor, 16)
    return {
        "requests": {"cpu": f"{cpu_m}m", "memory": f"{memory_mib}Mi"},
        "limits": {"cpu": f"{_round_up(cpu_m * factor, 50)}m", "memory": f"{memory_limit_mib}Mi"},
    }


# -- pod building blocks --------------------------------------------------------------


def container_security(uid: int = UID) -> Manifest:
    """The restricted Pod Security Standard, per container."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security(uid: int = UID) -> Manifest:
    """The restricted Pod Security Standard, per pod."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def topology_spread(part: str) -> list[Manifest]:
    """Spread a part's pods over zones and nodes (best effort: never blocks scheduling)."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector(part)},
            # Spread each revision on its own (Argo Rollouts labels its ReplicaSets' pods
            # with its own hash key).
            "matchLabelKeys": [
                "rollouts-pod-template-hash" if part in POOL else "pod-template-hash"
            ],
        }
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]


def writable_volumes() -> tuple[list[Manifest], list[Manifest]]:
    """Volumes and mounts of every pod: the suite file, /tmp and the run dir."""
    # The image's only writable paths (deploy/container/Containerfile), plus the suite file.
    volumes: list[Manifest] = [
        {"name": "config", "configMap": {"name": CONFIG_MAP}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "run", "mountPath": "/run/sluice"},
    ]
    return volumes, mounts


def probe_command(part: str, port: int, health_service: str = "") -> list[str]:
    """The exec probe of a part under mtls: its port, health service and identity files
    (certificates.certs_volume) written out, so the probe reads no settings."""
    command = ["python", "-m", "sluice.launcher.probe", "--port", str(port)]
    if health_service:
        command += ["--service", health_service]
    return [
        *command,
        "--ca", f"{CERTS_DIR}/{CA_CERT}",
        "--cert", f"{CERTS_DIR}/{cert_file(part)}",
        "--key", f"{CERTS_DIR}/{key_file(part)}",
        "--server-name", part,
    ]  # fmt: skip


def _grpc_probes(part: str, port: int, service: str, mtls: bool) -> Manifest:
    def check(health_service: str) -> Manifest:
        if not mtls:
            grpc: Manifest = {"port": port}
            if health_service:
                grpc["service"] = health_service
            return {"grpc": grpc}
        # The kubelet's gRPC probe speaks plaintext only; under mtls the part asks
        # itself with its own certificate (services/sluice/launcher/probe.py).
        return {"exec": {"command": probe_command(part, port, health_service)}}

    # An exec probe starts a Python process (about 0.2 s of CPU): give it more time.
    timeout = 5 if mtls else 2
    return {
        # Ready only when the part's dependencies are (its health turns SERVING), and
        # NOT_SERVING again as soon as SIGTERM starts the drain.
        "readinessProbe": {
            **check(service),
            "periodSeconds": 5,
            "timeoutSeconds": timeout,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            **check(""),
            "periodSeconds": 10,
            "timeoutSeconds": timeout,
            "failureThreshold": 3,
        },
        "startupProbe": {
            **check(""),
            "periodSeconds": 2,
            "timeoutSeconds": timeout,
            "failureThreshold": 30,
        },
    }


def _secret_env(values: K8sValues, part: str) -> list[Manifest]:
    optional = not values.secrets.required
    env: list[Manifest] = []
    if part == "router":
        env.append(
            {
                # JSON list of {id, sha256, tenant, ...}: overrides the file's api_keys.
                "name": "SLUICE_ROUTER_API_KEYS",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": values.secrets.api_keys,
                        "key": "api_keys.json",
                        "optional": optional,
                    }
                },
            }
        )
    if part == "limiter":
        env.append(
            {
                "name": "SLUICE_LIMITER_REDIS__URL",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": values.valkey.url_secret,
                        "key": "url",
                        "optional": optional or values.valkey.enabled,
                    }
                },
            }
        )
    return env


def pod_spec(
    values: K8sValues, suite: ClusterSuite, part: str, container: Manifest, grace_s: float
) -> Manifest:
    """A pod running one container of the suite's image."""
    volumes, mounts = writable_volumes()
    container["volumeMounts"] = mounts + container.get("volumeMounts", [])
    if part == "provider":
        volumes.append(
            {
                "name": "upstream",
                "secret": {
                    "secretName": values.secrets.upstream_credentials,
                    "optional": not values.secrets.required,
                    "defaultMode": 0o440,
                },
            }
        )
    if values.mtls.enabled:
        # Each part's own identity (docs/security.md); the Secret's keys become the
        # file names of security.certs_dir.
        volumes.append(certs_volume(values, part))
        container["volumeMounts"].append(
            {"name": "certs", "mountPath": CERTS_DIR, "readOnly": True}
        )
    if part == "envoy" and values.secrets.edge_tls_enabled:
        volumes.append(
            {"name": "tls", "secret": {"secretName": values.secrets.edge_tls, "defaultMode": 0o440}}
        )
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": math.ceil(PRE_STOP_S + grace_s + 5),
        "topologySpreadConstraints": topology_spread(part),
        "containers": [container],
        "volumes": volumes,
    }


def part_container(values: K8sValues, suite: ClusterSuite, part: str) -> Manifest:
    """The container of one part: `sluice serve PART` or `sluice envoy`."""
    env: list[Manifest] = [{"name": "SLUICE_CONFIG", "value": CONFIG_FILE}]
    mounts: list[Manifest] = []
    if part == "envoy":
        envoy = suite.settings.envoy
        args = ["envoy"]
        ports = [
            {"name": "http", "containerPort": envoy.port, "protocol": "TCP"},
            {"name": "stats", "containerPort": envoy.stats_port, "protocol": "TCP"},
        ]
        # Envoy's upstreams are the router's (and limiter's) Services.
        env += [
            {"name": "SLUICE_ROUTER_SERVER__HOST", "value": dns_name("router", values.namespace)},
            {
                "name": "SLUICE_ROUTER_HTTP_API__HOST",
                "value": dns_name("router", values.namespace),
            },
            {
                "name": "SLUICE_LIMITER_SERVER__HOST",
                "value": dns_name("limiter", values.namespace),
            },
        ]
        if values.secrets.edge_tls_enabled:
            mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
            env += [
                {"name": "SLUICE_ENVOY_TLS__CERT_PATH", "value": f"{TLS_DIR}/tls.crt"},
                {"name": "SLUICE_ENVOY_TLS__KEY_PATH", "value": f"{TLS_DIR}/tls.key"},
            ]
        probes: Manifest = {
            "readinessProbe": {
                "httpGet": {"path": "/ready", "port": "stats"},
                "periodSeconds": 5,
                "failureThreshold": 2,
            },
            "livenessProbe": {
                "httpGet": {"path": "/ready", "port": "stats"},
                "periodSeconds": 10,
                "failureThreshold": 3,
            },
        }
    else:
        server = suite.server(part)
        args = ["serve", part]
        ports = [
            {"name": "grpc", "containerPort": server.port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": server.metrics_port, "protocol": "TCP"},
        ]
        if part == "router" and suite.settings.router.http_api.enabled:
            ports.append(
                {
                    "name": "http",
                    "containerPort": suite.settings.router.http_api.port,
                    "protocol": "TCP",
                }
            )
        if part == "provider":
            mounts.append({"name": "upstream", "mountPath": UPSTREAM_SECRETS_DIR, "readOnly": True})
        probes = _grpc_probes(part, server.port, HEALTH_SERVICES[part], values.mtls.enabled)
    return {
        "name": part,
        "image": values.image,
        "imagePullPolicy": values.image_pull_policy,
        "args": args,
        "ports": ports,
        "env": env + _secret_env(values, part),
        "resources": resources(values.parts[part], values.sizing),
        "securityContext": container_security(),
        # Stay in the endpoints' view while they are updated, then SIGTERM starts the drain.
        # An exec `sleep` (coreutils is in the image), not the native `sleep` action: that
        # needs Kubernetes >= 1.30, and Argo Rollouts' CRD (deploy/k8s/crds/) predates it,
        # so the API server would prune it from a Rollout's pods and skip the grace.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_S)]}}},
        "volumeMounts": mounts,
        **probes,
    }


def grace_of(suite: ClusterSuite, part: str) -> float:
    """How long a part drains after SIGTERM."""
    if part == "envoy":
        return suite.settings.envoy.drain_time_s + 1
    return suite.server(part).shutdown_grace_s


def pod_template(values: K8sValues, suite: ClusterSuite, part: str) -> Manifest:
    """The pod template of a part's Deployment or Rollout."""
    return {
        "metadata": {
            "labels": labels(values, part),
            "annotations": {
                # Restart pods when the suite file changes.
                "sluice.dev/config-hash": suite_hash(suite),
            },
        },
        "spec": pod_spec(
            values, suite, part, part_container(values, suite, part), grace_of(suite, part)
        ),
    }


def suite_hash(suite: ClusterSuite) -> str:
    """Short digest of the suite file (a pod annotation, so a change rolls the pods)."""
    text = json.dumps(suite.config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def deployment(values: K8sValues, suite: ClusterSuite, part: str) -> Manifest:
    """One part's Deployment (the router's and provider's are Rollouts, rollout.py)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(values, part),
        "spec": {
            "replicas": values.parts[part].replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(part)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": pod_template(values, suite, part),
        },
    }


def service(values: K8sValues, suite: ClusterSuite, part: str) -> Manifest:
    """A part's Service: headless for gRPC parts (clients resolve every pod and balance
    per call); a plain ClusterIP for the edge."""
    if part == "envoy":
        envoy = suite.settings.envoy
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(values, part),
            "spec": {
                "type": "ClusterIP",
                "selector": selector(part),
                "ports": [
                    {
                        "name": "http",
                        "port": envoy.port,
                        "targetPort": "http",
                        "protocol": "TCP",
                        "appProtocol": "http",
                    }
                ],
            },
        }
    server = suite.server(part)
    ports = [
        {
            "name": "grpc",
            "port": server.port,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        },
        {
            "name": "metrics",
            "port": server.metrics_port,
            "targetPort": "metrics",
            "protocol": "TCP",
        },
    ]
    if part == "router" and suite.settings.router.http_api.enabled:
        ports.append(
            {
                "name": "http",
                "port": suite.settings.router.http_api.port,
                "targetPort": "http",
                "protocol": "TCP",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(values, part),
        "spec": {
            "clusterIP": "None",
            # Envoy's and gRPC's own health checks decide; list pods as soon as they exist
            # would send calls to starting pods, so only ready ones are published.
            "publishNotReadyAddresses": False,
            "selector": selector(part),
            "ports": ports,
        },
    }


def valkey(values: K8sValues) -> list[Manifest]:
    """A one-replica Valkey StatefulSet and its Service (the limiters' shared counters)."""
    memory = values.valkey.memory_mib
    meta = metadata(values, "valkey")
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "clusterIP": "None",
                "selector": selector("valkey"),
                "ports": [
                    {"name": "redis", "port": VALKEY_PORT, "targetPort": "redis", "protocol": "TCP"}
                ],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta,
            "spec": {
                "serviceName": name_of("valkey"),
                "replicas": 1,
                "selector": {"matchLabels": selector("valkey")},
                "template": {
                    "metadata": {"labels": labels(values, "valkey")},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "securityContext": pod_security(UID),
                        "terminationGracePeriodSeconds": 10,
                        "containers": [
                            {
                                "name": "valkey",
                                "image": values.valkey.image,
                                "imagePullPolicy": values.image_pull_policy,
                                # Counters expire within a window: nothing to persist.
                                "args": [
                                    "valkey-server",
                                    "--save",
                                    "",
                                    "--appendonly",
                                    "no",
                                    "--maxmemory",
                                    f"{int(memory * 0.8)}mb",
                                    "--maxmemory-policy",
                                    "volatile-ttl",
                                ],
                                "ports": [
                                    {
                                        "name": "redis",
                                        "containerPort": VALKEY_PORT,
                                        "protocol": "TCP",
                                    }
                                ],
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": f"{memory}Mi"},
                                    "limits": {"cpu": "500m", "memory": f"{memory}Mi"},
                                },
                                "securityContext": container_security(UID),
                                "readinessProbe": {
                                    "tcpSocket": {"port": "redis"},
                                    "periodSeconds": 5,
                                },
                                "livenessProbe": {
                                    "tcpSocket": {"port": "redis"},
                                    "periodSeconds": 10,
                                },
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/data"},
                                    {"name": "tmp", "mountPath": TMP_DIR},
                                ],
                            }
                        ],
                        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": values.valkey.storage}},
                        },
                    }
                ],
            },
        },
    ]
