"""The custom, monitoring, autoscaling and certificate resources of deploy/k8s: valid
against their CRDs' schemas (vendored in deploy/k8s/crds/), equal to the repository's
rules and dashboards, and doing what they claim when Prometheus evaluates them (promtool
over synthetic series)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.core.config import ConfigError
from sluice.core.grpcx.certs import CA_CERT, cert_file, key_file, spiffe_id
from sluice.launcher.k8s.render import render
from sluice.launcher.settings import load_suite
from tests.prometheus_tools import assert_promtool_tests_pass
from tests.unit.launcher import k8s_crds

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
OUTPUTS = ("base", "staging", "production")
PARTS = ("router", "limiter", "provider", "telemetry", "envoy")


def _resources(output: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted((K8S / output).glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _of_kind(output: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in _resources(output) if r["kind"] == kind]


def _named(output: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in _of_kind(output, kind) if r["metadata"]["name"] == name]
    return found


CRD_KINDS = {"Rollout", "AnalysisTemplate", "PodMonitor", "PrometheusRule", "Certificate"}


def _crd_errors(resource: dict[str, Any]) -> list[str]:
    """The CRD's complaints about a resource."""
    return [f"{list(e.absolute_path)}: {e.message}" for e in k8s_crds.errors(resource)]


def test_every_custom_kind_has_a_vendored_crd_with_its_provenance() -> None:
    crds = k8s_crds.crds()
    assert set(crds) == CRD_KINDS
    for kind, (schema, provenance) in crds.items():
        assert schema["properties"]["kind"]["enum"] == [kind]
        assert len(provenance["tarball_sha256"]) == 64
        assert provenance["registry"] == "https://registry.npmjs.org/"
    assert crds["Rollout"][1]["upstream_version"] == "v1.5.0"
    assert crds["Certificate"][1]["upstream_version"] == "v1.11.2"
    assert crds["PodMonitor"][1]["upstream_version"] == "v0.57.0"


@pytest.mark.parametrize("output", OUTPUTS)
def test_custom_resources_validate_against_their_vendored_crds(output: str) -> None:
    kinds = set()
    for resource in _resources(output):
        if resource["kind"] not in CRD_KINDS:
            continue
        kinds.add(resource["kind"])
        assert _crd_errors(resource) == [], resource["metadata"]["name"]
    expected = {"Rollout", "AnalysisTemplate", "PodMonitor", "PrometheusRule"}
    assert kinds == expected | ({"Certificate"} if output == "production" else set())


def test_the_native_pre_stop_sleep_would_be_pruned_from_a_rollout() -> None:
    # Why the preStop is an exec `sleep` (k8s/workloads.py): Argo Rollouts v1.5.0's CRD
    # predates the lifecycle `sleep` action, so a cluster would drop it from the pods.
    for rollout in _of_kind("production", "Rollout"):
        assert k8s_crds.errors(rollout) == []
        containers = rollout["spec"]["template"]["spec"]["containers"]
        for container in containers:
            container["lifecycle"]["preStop"] = {"sleep": {"seconds": 5}}
        found = k8s_crds.errors(rollout)
        assert len(found) == len(containers) >= 1
        assert all(k8s_crds.is_pre_stop_sleep(e) for e in found)


def _set(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = resource
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        # Fields the CRD does not declare (the API server would prune them).
        ("Rollout", ("spec", "strategy", "canary", "stepz"), []),
        ("Rollout", ("spec", "strategy", "canary", "analysis", "templates", 0, "name"), "x"),
        ("Rollout", ("metadata", "labelz"), {}),  # ObjectMeta, strict
        ("AnalysisTemplate", ("spec", "metrics", 0, "provider", "prometheus", "querry"), "up"),
        ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "intervall"), "15s"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "exp"), "up"),
        ("Certificate", ("spec", "dnsName"), ["router"]),
        # Wrong types, missing required fields and values outside an enum.
        ("Rollout", ("spec", "strategy", "canary", "steps", 0, "setWeight"), "five"),
        ("Rollout", ("spec", "replicas"), "2"),
        ("Rollout", ("spec", "strategy", "canary", "analysis", "args", 0, "name"), None),
        ("AnalysisTemplate", ("spec", "metrics"), {"name": "x"}),
        ("AnalysisTemplate", ("spec", "metrics", 0, "provider", "prometheus", "query"), 7),
        ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "relabelings"), "job"),
        ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "interval"), "15 seconds"),
        ("PrometheusRule", ("spec", "groups", 0, "name"), None),
        ("Certificate", ("spec", "privateKey", "algorithm"), "DSA"),
        ("Certificate", ("spec", "isCA"), "no"),
        ("Certificate", ("spec", "issuerRef"), {"kind": "ClusterIssuer"}),
    ],
)
def test_the_vendored_crd_refuses_a_field_it_lacks_or_a_wrong_type(
    kind: str, path: tuple[Any, ...], value: Any
) -> None:
    resource = copy.deepcopy(_of_kind("production", kind)[0])
    assert _crd_errors(resource) == []
    _set(resource, path, value)
    assert _crd_errors(resource), (kind, path, value)


@pytest.mark.parametrize("output", OUTPUTS)
def test_the_renderer_writes_nothing_the_crds_leave_unchecked(output: str) -> None:
    # What is not checked: the objects these CRDs declare without their fields (the
    # Rollout's traffic-routing plugins and anti-affinity terms, the AnalysisTemplate's
    # plugin provider and web JSON body) accept anything. The renderer writes none of them.
    for rollout in _of_kind(output, "Rollout"):
        canary = rollout["spec"]["strategy"]["canary"]
        assert "trafficRouting" not in canary and "antiAffinity" not in canary
    for template in _of_kind(output, "AnalysisTemplate"):
        assert all(set(m["provider"]) == {"prometheus"} for m in template["spec"]["metrics"])
    rollout = copy.deepcopy(_of_kind(output, "Rollout")[0])
    rollout["spec"]["strategy"]["canary"]["trafficRouting"] = {"plugins": {"any": {"x": 1}}}
    assert _crd_errors(rollout) == []  # indeed open


def test_prometheus_rules_are_the_rule_files_except_the_supervisors() -> None:
    rules = {r["metadata"]["name"]: r["spec"]["groups"] for r in _of_kind("base", "PrometheusRule")}
    files = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
    expected = {
        f"sluice-{path.name.split('.')[0]}": yaml.safe_load(path.read_text())["groups"]
        for path in files
        if path.name != "runtime.yml"  # the `sluice up` supervisor's; not in a cluster
    }
    assert rules == expected
    assert len(expected) == len(files) - 1


def _relabelled_job(endpoint: dict[str, Any], component: str) -> str:
    (relabel,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
    if "sourceLabels" in relabel:  # the default regex (.*) captures the whole label
        assert relabel["sourceLabels"] == [
            "__meta_kubernetes_pod_label_app_kubernetes_io_component"
        ]
        return str(relabel["replacement"]).replace("$1", component)
    return str(relabel["replacement"])


def test_the_pod_monitor_scrapes_every_part_under_the_jobs_the_rules_expect() -> None:
    (monitor,) = _of_kind("base", "PodMonitor")
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    pods = {
        r["metadata"]["name"].removeprefix("sluice-"): r["spec"]["template"]
        for r in _resources("base")
        if r["kind"] in {"Deployment", "Rollout", "StatefulSet"}
    }
    jobs = set()
    for part in PARTS:
        template = pods[part]
        assert all(
            template["metadata"]["labels"][k] == v
            for k, v in monitor["spec"]["selector"]["matchLabels"].items()
        )
        (container,) = template["spec"]["containers"]
        scraped = [p["name"] for p in container["ports"] if p["name"] in endpoints]
        assert len(scraped) == 1, part  # every part exactly once
        jobs.add(_relabelled_job(endpoints[scraped[0]], part))
    # The job names of the host's scrape configuration, which the rules match on.
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    host_jobs = {job["job_name"] for job in scrape["scrape_configs"]} - {"sluice-launcher"}
    assert jobs == host_jobs
    assert endpoints["stats"]["path"] == "/stats/prometheus"


def test_dashboards_are_the_grafana_files_for_its_sidecar() -> None:
    maps = {
        m["metadata"]["name"]: m
        for m in _of_kind("base", "ConfigMap")
        if m["metadata"]["name"].startswith("sluice-dashboard-")
    }
    files = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    assert set(maps) == {f"sluice-dashboard-{p.stem}" for p in files}
    for path in files:
        config_map = maps[f"sluice-dashboard-{path.stem}"]
        assert config_map["data"] == {path.name: path.read_text()}
        assert json.loads(config_map["data"][path.name])["uid"]
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "monitoring"


def _adapter_rules() -> list[dict[str, Any]]:
    config_map = _named("base", "ConfigMap", "sluice-prometheus-adapter-rules")
    rules: list[dict[str, Any]] = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    return rules


def test_the_router_hpa_scales_on_the_metrics_the_adapter_serves() -> None:
    hpa = _named("base", "HorizontalPodAutoscaler", "sluice-router")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Rollout"
    pods = {
        m["pods"]["metric"]["name"]: m["pods"]["target"]
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Pods"
    }
    served = {rule["name"]["as"] for rule in _adapter_rules()}
    assert set(pods) == served == {"sluice_router_queue_depth", "sluice_router_ttft_p95_seconds"}
    values = yaml.safe_load((K8S / "values.yaml").read_text())["custom_metrics"]
    assert pods["sluice_router_queue_depth"] == {
        "type": "AverageValue",
        "averageValue": str(values["queue_depth_per_pod"]),
    }
    assert pods["sluice_router_ttft_p95_seconds"]["averageValue"] == "1500m"  # 1.5 s
    # Only the router has them: the provider scales on CPU.
    provider = _named("base", "HorizontalPodAutoscaler", "sluice-provider")
    assert [m["type"] for m in provider["spec"]["metrics"]] == ["Resource"]


def _expand(rule: dict[str, Any], pods: str) -> str:
    """The adapter's template as it expands it for the pods of one namespace."""
    series = str(rule["seriesQuery"]).split("{")[0]
    return (
        str(rule["metricsQuery"])
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", f'namespace="sluice",pod=~"{pods}"')
        .replace("<<.GroupBy>>", "pod")
    )


def test_the_adapter_rules_give_each_pod_its_queue_and_ttft_with_promtool(tmp_path: Path) -> None:
    # Pod a waits for 3 + 4 requests over two back ends/classes, pod b for 1; pod a's
    # first tokens all take 0.5-1 s, pod b's under 0.1 s.
    depth = (
        'sluice_router_queue_depth{{namespace="sluice",pod="{pod}",backend="{b}",priority="{p}"}}'
    )
    bucket = (
        "sluice_router_time_to_first_token_seconds_bucket"
        '{{namespace="sluice",pod="{pod}",model="m",le="{le}"}}'
    )
    series = [
        {"series": depth.format(pod="a", b="x", p="interactive"), "values": "3x10"},
        {"series": depth.format(pod="a", b="y", p="batch"), "values": "4x10"},
        {"series": depth.format(pod="b", b="x", p="interactive"), "values": "1x10"},
        *(
            {"series": bucket.format(pod="a", le=le), "values": values}
            for le, values in (
                ("0.1", "0+0x10"),
                ("0.5", "0+0x10"),
                ("1", "0+10x10"),
                ("+Inf", "0+10x10"),
            )
        ),
        *(
            {"series": bucket.format(pod="b", le=le), "values": "0+10x10"}
            for le in ("0.1", "0.5", "1", "+Inf")
        ),
    ]
    queue, ttft = _adapter_rules()
    assert queue["seriesQuery"].startswith("sluice_router_queue_depth{")
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": _expand(queue, "a|b"),
                        "eval_time": "5m",
                        "exp_samples": [
                            {"labels": '{pod="a"}', "value": 7},
                            {"labels": '{pod="b"}', "value": 1},
                        ],
                    },
                    {
                        "expr": f"round(({_expand(ttft, 'a|b')}) * 1000)",
                        "eval_time": "5m",
                        "exp_samples": [
                            {"labels": '{pod="a"}', "value": 975},
                            {"labels": '{pod="b"}', "value": 95},
                        ],
                    },
                ],
            }
        ],
    }
    assert_promtool_tests_pass(tmp_path / "test.yml", tests)


def test_the_provider_gate_compares_canary_and_stable_with_promtool(tmp_path: Path) -> None:
    # Canary streams (hash c1) last 1-2.5 s, stable ones (s1) 1-2 s: p95 ratio 2.425/1.95.
    template = _named("base", "AnalysisTemplate", "sluice-provider-canary")
    gate = next(m for m in template["spec"]["metrics"] if m["name"] == "stream-p95-ratio")
    query = (
        gate["provider"]["prometheus"]["query"]
        .replace("{{args.namespace}}", "sluice")
        .replace("{{args.canary-hash}}", "c1")
        .replace("{{args.stable-hash}}", "s1")
    )
    bucket = (
        'sluice_rpc_duration_seconds_bucket{{service="provider",'
        'method="/sluice.provider.v1.ProviderService/Stream",namespace="sluice",'
        'pod="sluice-provider-{hash}-x",le="{le}"}}'
    )
    series = [
        *(
            {"series": bucket.format(hash="c1", le=le), "values": v}
            for le, v in (("1", "0+0x10"), ("2.5", "0+10x10"), ("+Inf", "0+10x10"))
        ),
        *(
            {"series": bucket.format(hash="s1", le=le), "values": v}
            for le, v in (
                ("1", "0+0x10"),
                ("2", "0+10x10"),
                ("2.5", "0+10x10"),
                ("+Inf", "0+10x10"),
            )
        ),
    ]
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": f"round(({query}) * 1000)",
                        "eval_time": "5m",
                        "exp_samples": [{"labels": "{}", "value": 1244}],  # 2.425 / 1.95
                    }
                ],
            }
        ],
    }
    assert_promtool_tests_pass(tmp_path / "test.yml", tests)
    assert gate["successCondition"].endswith("result[0] <= 1.25")  # so this canary fails


def test_production_parts_get_their_identity_certificates_from_cert_manager() -> None:
    certificates = {c["spec"]["secretName"]: c for c in _of_kind("production", "Certificate")}
    assert set(certificates) == {f"sluice-mtls-{part}" for part in PARTS}
    config = _named("production", "ConfigMap", "sluice-config")["data"]["sluice.yaml"]
    security = load_suite(data=yaml.safe_load(config)).router.security
    assert security.mtls is True
    for resource in _resources("production"):
        if resource["kind"] not in {"Deployment", "Rollout"}:
            continue
        part = resource["metadata"]["name"].removeprefix("sluice-")
        spec = resource["spec"]["template"]["spec"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "certs"]
        certificate = certificates[volume["secret"]["secretName"]]
        assert certificate["spec"]["commonName"] == part
        assert certificate["spec"]["uris"] == [spiffe_id(part)]  # what the parts authorize
        assert certificate["spec"]["dnsNames"] == [part]  # what clients check
        assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])
        assert {i["key"]: i["path"] for i in volume["secret"]["items"]} == {
            "tls.crt": cert_file(part),
            "tls.key": key_file(part),
            "ca.crt": CA_CERT,
        }
        (container,) = spec["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "certs"]
        assert Path(mount["mountPath"]) == security.certs_dir


@pytest.mark.parametrize("output", [*OUTPUTS, "podman"])
def test_no_volume_is_mounted_inside_another(output: str) -> None:
    # A configMap or Secret volume is read-only: the runtime cannot create another
    # volume's mount point inside it, and the pod would never start.
    for resource in _resources(output):
        spec = resource.get("spec", {})
        spec = spec.get("template", {}).get("spec", spec)
        for container in spec.get("containers", []):
            paths = [Path(m["mountPath"]) for m in container.get("volumeMounts", [])]
            for path in paths:
                inside = [other for other in paths if other != path and path in other.parents]
                assert not inside, (resource["metadata"]["name"], path, inside)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        (
            {"custom_metrics": {"queue_depth_per_pod": 0}},
            "values.custom_metrics.queue_depth_per_pod",
        ),
        (
            {"mtls": {"cert_manager": {"issuer_kind": "Vault"}}},
            "values.mtls.cert_manager.issuer_kind",
        ),
        (
            {"rollout": {"analysis": {"max_latency_ratio": 0.9}}},
            "values.rollout.analysis.max_latency_ratio",
        ),
        ({"prometheus": {"rules_dir": "nowhere"}}, "prometheus.rules_dir"),
        ({"grafana": {"dashboards_dir": "nowhere"}}, "grafana.dashboards_dir"),
    ],
)
def test_bad_values_fail_naming_the_field(
    tmp_path: Path, values: dict[str, Any], field: str
) -> None:
    path = tmp_path / "values.yaml"
    # Relative to the values file: point the directories at the repository's.
    defaults = {
        "prometheus": {"rules_dir": str(ROOT / "deploy" / "prometheus" / "rules")},
        "grafana": {"dashboards_dir": str(ROOT / "deploy" / "grafana")},
    }
    for section, given in values.items():
        defaults[section] = {**defaults.get(section, {}), **given}
    path.write_text(yaml.safe_dump(defaults))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        render(path)
