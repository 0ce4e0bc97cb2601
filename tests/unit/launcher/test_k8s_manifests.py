"""deploy/k8s/: rendered from the suite's settings and deploy/k8s/values.yaml, committed,
valid against the Kubernetes schemas of a pinned version, and saying what the design says
(restricted pods, gRPC health probes, draining, the trust graph, the canary)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sluice.core.config import ConfigError
from sluice.launcher.cli import main
from sluice.launcher.k8s.render import render, stale, write
from sluice.launcher.k8s.suite import plaintext_unless_set
from sluice.launcher.k8s.values import K8sValues, PartValues, SizingValues, load_values
from sluice.launcher.k8s.workloads import PRE_STOP_S, resources
from sluice.launcher.parts import HEALTH_SERVICES
from sluice.launcher.settings import load_suite
from tests.unit.launcher import k8s_crds

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
VALUES = K8S / "values.yaml"
KUBERNETES_VERSION = "1.31.0"
"""The Kubernetes schemas the manifests are validated against."""
OUTPUTS = ("base", "staging", "production")
ARGO = "argoproj.io/v1alpha1"
# Custom resources: checked against their vendored CRDs (tests/unit/launcher/k8s_crds.py).
CUSTOM_GROUPS = (ARGO, "monitoring.coreos.com/v1", "cert-manager.io/v1")


def _resources(output: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted((K8S / output).glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _of_kind(output: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in _resources(output) if r["kind"] == kind]


def _pod_specs(output: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (r["metadata"]["name"], r["spec"]["template"]["spec"])
        for r in _resources(output)
        if r["kind"] in {"Deployment", "StatefulSet", "Rollout"}
    ]


def test_committed_manifests_are_what_the_values_render() -> None:
    texts = render(VALUES)
    assert stale(texts, K8S) == [], (
        "deploy/k8s is stale: run `sluice k8s render --values deploy/k8s/values.yaml "
        "--output deploy/k8s/`"
    )
    assert {relative.split("/")[0] for relative in texts} == {*OUTPUTS, "podman"}


@pytest.mark.parametrize("output", OUTPUTS)
def test_every_resource_validates_against_the_pinned_kubernetes_schemas(output: str) -> None:
    kinds = set()
    for resource in _resources(output):
        kinds.add(resource["kind"])
        if resource["apiVersion"] in CUSTOM_GROUPS:
            continue  # checked against their CRDs' fields (test_k8s_custom_resources.py)
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "Service", "StatefulSet", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "NetworkPolicy", "Rollout", "AnalysisTemplate"} <= kinds
    assert {"PodMonitor", "PrometheusRule", "ConfigMap"} <= kinds


def test_an_invalid_manifest_is_refused_by_the_validator() -> None:
    # The validation above can fail: a misspelt field in strict mode.
    deployment = copy.deepcopy(_of_kind("base", "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _named(output: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in _of_kind(output, kind) if r["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("part", ["router", "provider"])
@pytest.mark.parametrize("output", OUTPUTS)
def test_the_pool_rollouts_are_canaries_through_5_25_50_100_with_analysis(
    output: str, part: str
) -> None:
    assert {r["metadata"]["name"] for r in _of_kind(output, "Rollout")} == {
        "sluice-router",
        "sluice-provider",
    }
    rollout = _named(output, "Rollout", f"sluice-{part}")
    template = _named(output, "AnalysisTemplate", f"sluice-{part}-canary")
    # Against Argo Rollouts' CRDs (deploy/k8s/crds/).
    for resource in (rollout, template):
        problems = k8s_crds.errors(resource)
        assert problems == [], [p.message for p in problems]
    # The pod template is a real PodTemplateSpec: validate it as a Deployment's.
    as_deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": rollout["metadata"],
        "spec": {k: rollout["spec"][k] for k in ("replicas", "selector", "template")},
    }
    kubernetes_validate.validate(as_deployment, KUBERNETES_VERSION, strict=True)
    canary = rollout["spec"]["strategy"]["canary"]
    weights = [step["setWeight"] for step in canary["steps"] if "setWeight" in step]
    assert weights == [5, 25, 50, 100]
    assert [next(iter(s)) for s in canary["steps"]] == [
        "setWeight", "pause", "setWeight", "pause", "setWeight", "pause", "setWeight",
    ]  # fmt: skip
    assert all(len(step) == 1 for step in canary["steps"])  # one action per step
    pauses = [step["pause"]["duration"] for step in canary["steps"] if "pause" in step]
    assert all(re.fullmatch(r"[0-9]+[smh]", str(duration)) for duration in pauses), pauses
    hashes = [a["valueFrom"]["podTemplateHashValue"] for a in canary["analysis"]["args"]
              if "podTemplateHashValue" in a.get("valueFrom", {})]  # fmt: skip
    assert sorted(hashes) == ["Latest", "Stable"]  # the values Argo Rollouts accepts
    assert all(m["provider"]["prometheus"]["address"] for m in template["spec"]["metrics"])
    assert canary["analysis"]["templates"] == [{"templateName": template["metadata"]["name"]}]
    declared = {arg["name"] for arg in template["spec"]["args"]}
    assert {arg["name"] for arg in canary["analysis"]["args"]} == declared
    gates = {m["name"]: m for m in template["spec"]["metrics"]}
    assert all(
        "{{args.canary-hash}}" in g["provider"]["prometheus"]["query"] for g in gates.values()
    )
    assert all(g["failureLimit"] == 1 for g in gates.values())  # then Argo aborts
    if part == "router":  # the host canary's gates: tests/unit/launcher/test_k8s_analysis.py
        assert set(gates) == {
            "error-rate", "upstream-error-rate", "success-rate", "latency-p99", "ttft-p99",
        }  # fmt: skip
        assert all(  # canary over stable
            "{{args.stable-hash}}" in g["provider"]["prometheus"]["query"] for g in gates.values()
        )
        return
    assert set(gates) == {"server-error-ratio", "stream-p95-ratio"}
    errors = gates["server-error-ratio"]["provider"]["prometheus"]["query"]
    assert "sluice_rpc_requests_total" in errors and "INTERNAL|UNAVAILABLE" in errors
    assert f'service="{part}"' in errors
    slow = gates["stream-p95-ratio"]["provider"]["prometheus"]["query"]
    assert "histogram_quantile(0.95" in slow
    assert "sluice_rpc_duration_seconds_bucket" in slow and "Stream" in slow
    assert "{{args.stable-hash}}" in slow  # canary over stable
    assert gates["server-error-ratio"]["successCondition"].endswith("result[0] <= 0.01")


def test_the_gates_query_metrics_the_services_export() -> None:
    # The metric names in the analysis exist in the code that exports them.
    sources = "".join(p.read_text() for p in (ROOT / "services").rglob("*.py"))
    assert '"sluice_rpc_requests_total"' in sources or '"sluice_rpc_requests"' in sources
    assert "sluice_router_time_to_first_token_seconds" in sources


@pytest.mark.parametrize("output", OUTPUTS)
def test_every_pod_is_restricted_sized_and_drains(output: str) -> None:
    specs = _pod_specs(output)
    assert len(specs) == 6  # five parts and Valkey
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert security["runAsUser"] > 0, name
            assert set(container["resources"]) == {"requests", "limits"}, name
            assert container["readinessProbe"] and container["livenessProbe"], name
        if name == "sluice-valkey":
            continue
        (container,) = spec["containers"]
        pre_stop = {"exec": {"command": ["sleep", str(PRE_STOP_S)]}}
        assert container["lifecycle"]["preStop"] == pre_stop, name
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/run/sluice", "/etc/sluice/config"} <= mounts, name


@pytest.mark.parametrize("output", OUTPUTS)
def test_services_are_probed_over_grpc_health_and_drain_within_the_grace(output: str) -> None:
    config = yaml.safe_load(_named(output, "ConfigMap", "sluice-config")["data"]["sluice.yaml"])
    settings = load_suite(data=config)
    for name, spec in _pod_specs(output):
        part = name.removeprefix("sluice-")
        if part not in HEALTH_SERVICES:
            continue
        (container,) = spec["containers"]
        server = getattr(settings, part).server
        assert container["args"] == ["serve", part]
        if settings.router.security.mtls:
            # The kubelet's gRPC probe cannot speak mTLS: the part asks itself with its
            # own certificate (python -m sluice.launcher.probe).
            ready = container["readinessProbe"]["exec"]["command"]
            live = container["livenessProbe"]["exec"]["command"]
            assert ready[:3] == live[:3] == ["python", "-m", "sluice.launcher.probe"]
            for command in (ready, live):
                flags = dict(zip(command[3::2], command[4::2], strict=True))
                assert flags["--port"] == str(server.port)
                assert flags["--server-name"] == part
                certs = settings.router.security.certs_dir
                assert flags["--cert"] == f"{certs}/{part}.pem"
                assert flags["--key"] == f"{certs}/{part}-key.pem"
                assert flags["--ca"] == f"{certs}/ca.pem"
            assert (
                dict(zip(ready[3::2], ready[4::2], strict=True))["--service"]
                == (HEALTH_SERVICES[part])
            )
            assert "--service" not in live
        else:
            assert container["readinessProbe"]["grpc"] == {
                "port": server.port,
                "service": HEALTH_SERVICES[part],
            }
            assert container["livenessProbe"]["grpc"] == {"port": server.port}
        assert spec["terminationGracePeriodSeconds"] >= PRE_STOP_S + server.shutdown_grace_s


def test_grpc_services_are_headless_and_addresses_name_them() -> None:
    services = {s["metadata"]["name"]: s for s in _of_kind("production", "Service")}
    for part in ("router", "limiter", "provider", "telemetry"):
        assert services[f"sluice-{part}"]["spec"]["clusterIP"] == "None"
    config = yaml.safe_load(
        _named("production", "ConfigMap", "sluice-config")["data"]["sluice.yaml"]
    )
    ns = "sluice-production"
    limiter_port = services["sluice-limiter"]["spec"]["ports"][0]["port"]
    assert config["router"]["limiter_address"] == (
        f"dns:///sluice-limiter.{ns}.svc.cluster.local:{limiter_port}"
    )
    assert config["limiter"]["backend"] == "redis"
    assert "sluice-valkey" in config["limiter"]["redis"]["url"]
    assert config["router"]["api_keys"] == []  # production keys come from the Secret


def test_the_suite_file_says_plaintext_since_kubelet_probes_have_no_certificate() -> None:
    # Mutual TLS is the default elsewhere; the kubelet's gRPC probes could not pass it.
    # Production turns it on (values' mtls.enabled) with exec probes and mounted Secrets.
    for output in ("base", "staging", "production", "podman"):
        [config_map] = [
            c for c in _of_kind(output, "ConfigMap") if "sluice.yaml" in c.get("data", {})
        ]
        config = yaml.safe_load(config_map["data"]["sluice.yaml"])
        if output == "production":
            assert config["security"]["mtls"] is True
            assert config["security"]["certs_dir"] == "/etc/sluice/certs"
        else:
            assert config["security"]["mtls"] is False, output
    chosen = plaintext_unless_set({"security": {"mtls": True, "certs_dir": "/etc/sluice/m"}})
    assert chosen["security"]["mtls"] is True  # the values' own choice is kept


def _edges(output: str) -> set[tuple[str, str, int]]:
    """(from component or 'prometheus' or '*', to component, port) that the policies allow."""
    allowed = set()
    for policy in _of_kind(output, "NetworkPolicy"):
        to = policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from") or [None]
            for peer in peers:
                if peer is None:
                    source = "*"
                elif "namespaceSelector" in peer:
                    source = "prometheus"
                else:
                    source = peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                for port in rule["ports"]:
                    allowed.add((source, to, port["port"]))
    return allowed


def test_network_policies_allow_only_the_trust_graph() -> None:
    deny = [p for p in _of_kind("base", "NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and "ingress" not in deny[0]["spec"]
    edges = _edges("base")
    # Envoy's edge rate limit is off by default, so Envoy may not reach the limiter.
    expected = {
        ("*", "envoy", 8080),
        ("envoy", "router", 50051),
        ("envoy", "router", 8090),
        ("router", "limiter", 50052),
        ("router", "provider", 50053),
        ("limiter", "valkey", 6379),
        *((p, "telemetry", 4317) for p in ("router", "limiter", "provider", "envoy")),
        ("prometheus", "envoy", 9902),  # the stats listener, not the admin port
        *(
            ("prometheus", part, port)
            for part, port in (("router", 9101), ("limiter", 9102), ("provider", 9103))
        ),
        ("prometheus", "telemetry", 9104),
    }
    assert edges == expected


def test_sizing_rule() -> None:
    sizing = SizingValues(
        streams_per_pod=100, tokens_per_second_per_stream=10, cpu_ms_per_token=0.5
    )
    streams = resources(PartValues(scales_with_streams=True), sizing)
    # 100 streams x 10 tokens/s x 0.5 ms = 500 ms of CPU per second; 160 MiB + 100 x 96 KiB.
    assert streams["requests"] == {"cpu": "500m", "memory": "176Mi"}
    assert streams["limits"] == {"cpu": "1000m", "memory": "352Mi"}
    fixed = resources(PartValues(cpu_request_millicores=120, memory_request_mib=64), sizing)
    assert fixed["requests"] == {"cpu": "120m", "memory": "64Mi"}


def test_the_memory_limit_holds_every_stream_stalled() -> None:
    # 1,000 streams: requests 160 MiB + 1,000 x 96 KiB = 256 Mi, twice that is 512 Mi, but
    # 1,000 stalled streams at 460 KiB need 160 + 449 = 609 MiB: the limit is 624 Mi.
    sizing = SizingValues(streams_per_pod=1000)
    streams = resources(PartValues(scales_with_streams=True), sizing)
    assert streams["requests"]["memory"] == "256Mi"
    assert streams["limits"]["memory"] == "624Mi"
    # The committed manifests: 200 streams stalled fit under the router's limit.
    rollout = _named("base", "Rollout", "sluice-router")
    (container,) = rollout["spec"]["template"]["spec"]["containers"]
    limit_mib = int(container["resources"]["limits"]["memory"].removesuffix("Mi"))
    assert limit_mib >= 160 + 200 * 460 / 1024


def test_overlays_merge_over_the_base() -> None:
    outputs = load_values(VALUES)
    assert outputs["base"].namespace == "sluice"
    assert outputs["production"].parts["router"].replicas == 4
    assert outputs["production"].parts["telemetry"] == outputs["base"].parts["telemetry"]
    assert outputs["production"].secrets.required is True
    assert outputs["staging"].rollout.steps == [5, 25, 50, 100]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"rollout": {"steps": [5, 50, 25, 100]}}, "values.rollout.steps"),
        ({"parts": {"gateway": {}}}, "values"),
        ({"parts": {"router": {"replicas": 5, "max_replicas": 2}}}, "values.parts.router"),
        ({"environments": {"prod": {"namespace": "Not_Valid"}}}, "environments.prod.namespace"),
        ({"suite": {"router": {"server": {"port": 70000}}}}, "router.server.port"),
    ],
)
def test_bad_values_fail_naming_the_field(
    tmp_path: Path, values: dict[str, Any], field: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        render(path)


def test_values_model_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="replica"):
        K8sValues.model_validate({"parts": {"router": {"replica": 3}}})


def test_render_command_writes_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k8s"
    assert main(["k8s", "render", "--values", str(VALUES), "--output", str(out), "--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert main(["k8s", "render", "--values", str(VALUES), "--output", str(out)]) == 0
    assert main(["k8s", "render", "--values", str(VALUES), "--output", str(out), "--check"]) == 0
    (out / "base" / "extra.yaml").write_text("{}\n")
    assert main(["k8s", "render", "--values", str(VALUES), "--output", str(out), "--check"]) == 1
    write(render(VALUES), out)
    assert not (out / "base" / "extra.yaml").exists()


def test_the_podman_pod_runs_every_part_on_loopback_with_the_same_containers() -> None:
    config_map, pod = list(yaml.safe_load_all((K8S / "podman" / "suite-pod.yaml").read_text()))
    for resource in (config_map, pod):
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert list(containers) == ["router", "limiter", "provider", "telemetry", "envoy"]
    assert containers["envoy"]["args"] == ["envoy"]
    for name, container in containers.items():
        assert {m["mountPath"] for m in container["volumeMounts"]} == {
            "/etc/sluice/config",
            "/tmp",
            "/run/sluice",
        }, name
        assert all("valueFrom" not in e for e in container["env"]), name  # no Secrets
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Only the edge and telemetry's query port are declared, published on loopback:
    # `podman kube play` publishes every declared port on all host addresses.
    declared = {
        (name, port["name"], port.get("hostIP"))
        for name, container in containers.items()
        for port in container.get("ports", [])
    }
    assert declared == {("envoy", "http", "127.0.0.1"), ("telemetry", "grpc", "127.0.0.1")}
    settings = load_suite(data=yaml.safe_load(config_map["data"]["sluice.yaml"]))
    assert settings.router.limiter_address.startswith("127.0.0.1:")  # one network namespace
    assert settings.envoy.host == "0.0.0.0"  # published by the host


def test_render_into_an_unwritable_place_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["k8s", "render", "--values", str(VALUES), "--output", str(blocker / "k8s")])
    assert code == 1
    assert "cannot write" in capsys.readouterr().err


def test_a_missing_values_file_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["k8s", "render", "--values", "/nonexistent/values.yaml", "--output", "x"])
    assert code == 2
    assert "cannot read values file" in capsys.readouterr().err
