"""The values file of `sluice k8s render`: what the suite's settings cannot know (image,
sizes, replicas, secrets, the canary), with one overlay per environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sluice.core.config import ConfigError, deep_merge, describe_validation_error

PARTS = ("router", "limiter", "provider", "telemetry", "envoy")
"""Every Deployment (or Rollout) of the suite, one per part."""
POOL = ("router", "provider")
"""The parts that carry streams: Argo Rollouts canaries instead of Deployments."""

_Strict = ConfigDict(use_attribute_docstrings=True, extra="forbid")


class SizingValues(BaseModel):
    """Inputs of the sizing rule (docs/kubernetes.md, "Sizing")."""

    model_config = _Strict

    streams_per_pod: int = Field(200, ge=1)
    """Concurrent streams one router (and one provider) pod is sized for."""
    tokens_per_second_per_stream: float = Field(20.0, gt=0)
    """Tokens each stream delivers per second."""
    cpu_ms_per_token: float = Field(0.3, gt=0)
    """CPU per delivered token in milliseconds. 0.3 ms is the whole suite's cost measured
    on the host (docs/architecture.md); each part is given all of it, an upper bound."""
    base_memory_mib: int = Field(160, ge=16)
    """Resident memory of an idle part."""
    memory_kib_per_stream: int = Field(96, ge=1)
    """Memory per open stream: the 64 KiB receive window plus the answer text kept
    (measured: 67 KB per idle stream, loadtest/README.md, stream_memory.py)."""
    stalled_memory_kib_per_stream: int = Field(460, ge=1)
    """Memory per stream whose client stopped reading (measured: 459 KB for gRPC, 283 KB
    for SSE): the memory limit holds every stream of a pod stalled at once."""
    limit_factor: float = Field(2.0, ge=1.0)
    """Limits are this many times the requests (CPU bursts, memory headroom)."""


class PartValues(BaseModel):
    """Size and scaling of one part."""

    model_config = _Strict

    replicas: int = Field(2, ge=1)
    """Pods when no autoscaler runs (and the autoscaler's floor)."""
    max_replicas: int = Field(6, ge=1)
    """Autoscaler ceiling."""
    target_cpu_percent: int = Field(70, ge=10, le=100)
    """Average CPU utilisation (of requests) the autoscaler keeps."""
    scales_with_streams: bool = False
    """Size from the sizing rule (router, provider); else the fixed requests below."""
    cpu_request_millicores: int = Field(100, ge=10)
    """CPU request of a part that does not scale with streams."""
    memory_request_mib: int = Field(128, ge=32)
    """Memory request of a part that does not scale with streams."""

    @model_validator(mode="after")
    def _ceiling(self) -> PartValues:
        if self.max_replicas < self.replicas:
            raise ValueError("max_replicas must be at least replicas")
        return self


def _parts() -> dict[str, PartValues]:
    return {
        "router": PartValues(replicas=2, max_replicas=10, scales_with_streams=True),
        "provider": PartValues(replicas=2, max_replicas=10, scales_with_streams=True),
        "limiter": PartValues(replicas=2, max_replicas=4),
        "telemetry": PartValues(replicas=1, max_replicas=1, memory_request_mib=256),
        "envoy": PartValues(replicas=2, max_replicas=6, cpu_request_millicores=250),
    }


class ValkeyValues(BaseModel):
    """The shared Redis-protocol store of the limiters."""

    model_config = _Strict

    enabled: bool = True
    """Run Valkey in the cluster (a StatefulSet); false: use `external_url_secret`."""
    image: str = "docker.io/valkey/valkey:8.1.1-bookworm"
    """Valkey image; pin a digest in production."""
    memory_mib: int = Field(256, ge=32)
    """Memory request and limit (limits state is small and expires by itself)."""
    storage: str = "1Gi"
    """Volume size (not persisted: rate limit state is rebuilt within a window)."""
    url_secret: str = "sluice-valkey"  # noqa: S105 - a Secret's name
    """Secret whose key `url` holds redis://[:password@]host:port/db; in-cluster Valkey
    uses sluice-valkey:6379 when the Secret is absent."""


class PrometheusValues(BaseModel):
    """Where Prometheus runs: its scrapes and queries."""

    model_config = _Strict

    namespace: str = "monitoring"
    """Namespace of the Prometheus pods (allowed to scrape metrics ports)."""
    pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "prometheus"}
    )
    """Labels of the Prometheus pods."""
    url: str = "http://prometheus-operated.monitoring.svc:9090"
    """Prometheus the canary analysis queries."""
    operator: bool = True
    """Render the Prometheus Operator's resources: a PodMonitor for every part's metrics
    and PrometheusRules from `rules_dir`."""
    resource_labels: dict[str, str] = Field(default_factory=dict)
    """Labels on the PodMonitor and PrometheusRules, for the Prometheus resource's
    podMonitorSelector and ruleSelector (e.g. release: kube-prometheus-stack)."""
    rules_dir: str = "../prometheus/rules"
    """Prometheus rule files (relative to the values file) turned into PrometheusRules."""
    skip_rule_files: list[str] = Field(default_factory=lambda: ["runtime.yml"])
    """Rule files not for a cluster: runtime.yml watches the `sluice up` supervisor,
    which Kubernetes replaces (its restarts show in kube-state-metrics)."""
    adapter_namespace: str = "monitoring"
    """Namespace of prometheus-adapter, where its rules' ConfigMap is rendered."""


class GrafanaValues(BaseModel):
    """The dashboards as ConfigMaps for Grafana's dashboard sidecar."""

    model_config = _Strict

    enabled: bool = True
    """Render one ConfigMap per dashboard."""
    dashboards_dir: str = "../grafana"
    """Dashboard JSON files (relative to the values file)."""
    namespace: str = "monitoring"
    """Namespace the sidecar watches."""
    labels: dict[str, str] = Field(default_factory=lambda: {"grafana_dashboard": "1"})
    """Labels the sidecar picks ConfigMaps by (its `label`/`labelValue`)."""


class CustomMetricsValues(BaseModel):
    """The router's autoscaling on its own metrics, served to the HPA by
    prometheus-adapter (docs/kubernetes.md, "Scaling")."""

    model_config = _Strict

    enabled: bool = True
    """Add the metrics below to the router's HorizontalPodAutoscaler and render the
    prometheus-adapter rules that expose them."""
    queue_depth_per_pod: float = Field(10.0, gt=0)
    """Average requests waiting for admission per router pod (sluice_router_queue_depth)
    above which the router scales out."""
    ttft_p95_s: float = Field(1.5, gt=0)
    """Time-to-first-token p95 per router pod above which it scales out (below the
    canary's abort gate, so scaling acts before a rollout would abort)."""
    window: str = Field("2m", pattern=r"^[0-9]+[smh]$")
    """Rate window of the TTFT p95."""


class SecretValues(BaseModel):
    """Keys, upstream credentials and certificates: Secrets the operator creates."""

    model_config = _Strict

    api_keys: str = "sluice-api-keys"
    """Secret whose key `api_keys.json` is the router's api_keys list (sha256 of each key)."""
    upstream_credentials: str = "sluice-upstream-credentials"
    """Secret mounted at /etc/sluice/secrets/upstream on the provider (api_key_file)."""
    edge_tls: str = "sluice-edge-tls"
    """kubernetes.io/tls Secret of the edge certificate (when `edge_tls` is on)."""
    required: bool = False
    """Pods wait for the Secrets (production); else they start without them."""
    edge_tls_enabled: bool = False
    """Serve TLS on the edge from the edge_tls Secret."""


class CertManagerValues(BaseModel):
    """cert-manager issuing the mTLS Secrets (one Certificate per identity)."""

    model_config = _Strict

    enabled: bool = False
    """Render a cert-manager Certificate per identity; else the operator creates the
    Secrets (e.g. from `sluice certs`)."""
    issuer_name: str = "sluice-ca"
    """The issuer that signs them: a CA Issuer whose CA every part trusts."""
    issuer_kind: Literal["Issuer", "ClusterIssuer"] = "Issuer"
    """Namespaced Issuer or ClusterIssuer."""
    duration: str = Field("2160h", pattern=r"^[0-9]+h$")
    """Certificate lifetime (90 days)."""
    renew_before: str = Field("720h", pattern=r"^[0-9]+h$")
    """Renew this long before expiry (the parts reload rotated files by themselves)."""


class MtlsValues(BaseModel):
    """Mutual TLS between the parts: each identity's certificate from a Secret."""

    model_config = _Strict

    enabled: bool = False
    """Turn `security.mtls` on and mount each part's Secret as its certificate directory."""
    secret_prefix: str = "sluice-mtls-"  # noqa: S105 - a Secret name prefix
    """Secret of an identity: prefix + identity (router, limiter, provider, telemetry,
    envoy), with keys tls.crt, tls.key and ca.crt (cert-manager's layout)."""
    cert_manager: CertManagerValues = CertManagerValues()
    """Issue those Secrets with cert-manager."""


class AnalysisValues(BaseModel):
    """How the canary's gates are measured. The router's gates and thresholds are those of
    `sluice rollout canary` (launcher/rollout/gates.py, the suite's `rollout` section);
    the provider's are below."""

    model_config = _Strict

    max_error_ratio: float = Field(0.01, gt=0, lt=1)
    """Provider: most server-side errors per RPC on the canary pods."""
    max_latency_ratio: float = Field(1.25, gt=1)
    """Highest p95 stream duration of the provider's canary pods as a multiple of its
    stable pods' (a relative gate: stream length depends on the answers, not the pod)."""
    window: str = Field("2m", pattern=r"^[0-9]+[smh]$")
    """Rate window of every gate's query."""
    interval: str = Field("1m", pattern=r"^[0-9]+[smh]$")
    """How often each gate is measured."""
    failure_limit: int = Field(1, ge=0)
    """Failed measurements tolerated before the rollout aborts."""
    inconclusive_limit: int = Field(3, ge=0)
    """Router: measurements with fewer than the suite's `rollout.min_requests` canary
    requests in the window tolerated before Argo pauses the rollout for a person."""


class RolloutValues(BaseModel):
    """The canary of the router/provider pool (Argo Rollouts)."""

    model_config = _Strict

    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100], min_length=1)
    """Canary weights in percent, ending at 100."""
    pause: str = Field("5m", pattern=r"^[0-9]+[smh]$")
    """How long each weight holds while the analysis runs."""
    analysis: AnalysisValues = AnalysisValues()
    """Abort gates."""

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if steps != sorted(set(steps)) or steps[-1] != 100 or steps[0] <= 0:
            raise ValueError("steps must increase strictly from above 0 to 100")
        return steps


class K8sValues(BaseModel):
    """Everything `sluice k8s render` needs besides the suite's settings."""

    model_config = _Strict

    namespace: str = Field("sluice", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Namespace of every resource."""
    image: str = "localhost/sluice:0.1.0"
    """The suite's image (`make image`); a registry path with a digest in production."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Kubernetes imagePullPolicy."""
    suite: dict[str, Any] = Field(default_factory=dict)
    """Suite settings (the sections of deploy/sluice.example.yaml); addresses and bind
    hosts are set by the renderer."""
    sizing: SizingValues = SizingValues()
    """The sizing rule's inputs."""
    parts: dict[str, PartValues] = Field(default_factory=_parts)
    """Per part: replicas, autoscaling, fixed requests."""
    valkey: ValkeyValues = ValkeyValues()
    """Shared limits store."""
    prometheus: PrometheusValues = PrometheusValues()
    """Metrics scraping and the canary's queries."""
    secrets: SecretValues = SecretValues()
    """Secret names."""
    rollout: RolloutValues = RolloutValues()
    """The canary of the router and provider Rollouts."""
    grafana: GrafanaValues = GrafanaValues()
    """Dashboards as ConfigMaps."""
    custom_metrics: CustomMetricsValues = CustomMetricsValues()
    """The router's autoscaling on queue depth and TTFT p95."""
    mtls: MtlsValues = MtlsValues()
    """Mutual TLS certificates from Secrets (optionally cert-manager)."""
    environments: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Overlays merged over these values per environment (e.g. staging, production)."""

    @model_validator(mode="after")
    def _every_part(self) -> K8sValues:
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; parts are {list(PARTS)}")
        self.parts = _parts() | self.parts
        return self


def _validated(data: dict[str, Any], where: str) -> K8sValues:
    try:
        return K8sValues(**data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(where, err)) from err


def load_values(path: Path) -> dict[str, K8sValues]:
    """Values per output: 'base', then each environment (its overlay merged over base)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"cannot read values file {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"values file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"values file {path} must hold a mapping")
    base = _validated(data, "values")
    outputs = {"base": base}
    overlays = data.get("environments") or {}
    for name, overlay in overlays.items():
        merged = deep_merge({k: v for k, v in data.items() if k != "environments"}, overlay)
        outputs[name] = _validated(merged, f"environments.{name}")
    return outputs
