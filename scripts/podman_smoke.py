"""Runs the suite from its image with `podman kube play` (deploy/k8s/podman/suite-pod.yaml)
and smoke-tests it through its Envoy: a gRPC stream, SSE, an OpenAI-compatible stream, a
401, and one trace stored by the telemetry service. Prints the time from `kube play` to
SERVING and the time `podman pod stop` takes (the drain), then removes the pod.

Usage (root, podman, the image built): make podman-smoke, or
  CONTAINERS_CONF=... python scripts/podman_smoke.py --image localhost/sluice:0.1.0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket

# podman runs with fixed argv lists (no shell).
import subprocess  # nosec B404
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml

from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
POD_FILE = ROOT / "deploy" / "k8s" / "podman" / "suite-pod.yaml"
# A name of this run's own: another run on the machine (a pipeline, another checkout)
# may play the same file at the same time, and `kube play --replace` would take its pod.
POD_NAME = f"sluice-suite-{os.getpid()}"
DEV_KEY = "sk-sluice-dev"
AUTH = {"authorization": f"Bearer {DEV_KEY}"}
BODY: dict[str, Any] = {
    "model": "default",
    "messages": [{"role": "user", "content": "Tell me about sluices"}],
    "max_tokens": 8,
}


class SmokeError(AssertionError):
    """A smoke check failed."""


def check(condition: bool, what: str) -> None:
    """Fail the smoke test naming what was expected."""
    if not condition:
        raise SmokeError(what)


def free_port() -> int:
    """A free loopback port for a published container port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def podman(*args: str, check_rc: bool = True) -> subprocess.CompletedProcess[str]:
    """Run podman (its configuration comes from CONTAINERS_CONF in the environment)."""
    binary = shutil.which("podman")
    if binary is None:
        raise SystemExit("podman is not installed (make podman-deps)")
    return subprocess.run(  # noqa: S603  # nosec B603
        [binary, *args], capture_output=True, text=True, check=check_rc, timeout=300
    )


def prepared_pod(image: str, edge_port: int, telemetry_port: int) -> list[dict[str, Any]]:
    """The committed Pod with this run's image, published ports and full sampling."""
    config_map, pod = list(yaml.safe_load_all(POD_FILE.read_text(encoding="utf-8")))
    suite = yaml.safe_load(config_map["data"]["sluice.yaml"]) or {}
    # Keep every trace, so the one the smoke test sends is stored.
    suite.setdefault("tracing", {})["sample_ratio"] = 1.0
    suite.setdefault("telemetry", {})["sampling"] = {"keep_ratio": 1.0, "decision_wait_s": 0.2}
    suite.setdefault("router", {})["dev_mode"] = True  # the smoke test sends the development key
    config_map["data"]["sluice.yaml"] = yaml.safe_dump(suite)
    config_map["metadata"]["name"] = f"{POD_NAME}-config"
    pod["metadata"]["name"] = POD_NAME
    for volume in pod["spec"]["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["name"] = config_map["metadata"]["name"]
    for container in pod["spec"]["containers"]:
        container["image"] = image
        for port in container.get("ports", []):
            published = {("envoy", "http"): edge_port, ("telemetry", "grpc"): telemetry_port}
            host_port = published.get((container["name"], port["name"]))
            if host_port is not None:
                port.update(hostPort=host_port, hostIP="127.0.0.1")
    return [config_map, pod]


@contextlib.contextmanager
def played(manifests: list[dict[str, Any]]) -> Iterator[Path]:
    """`podman kube play` the manifests; `--down` afterwards, even on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite-pod.yaml"
        path.write_text(yaml.safe_dump_all(manifests), encoding="utf-8")
        try:
            podman("kube", "play", "--replace", str(path))
            yield path
        finally:
            podman("kube", "play", "--down", str(path), check_rc=False)


def wait_serving(edge: str, limit_s: float = 120.0) -> float:
    """Seconds until a request crosses the whole suite: POST /v1/complete through Envoy's
    health-checked router cluster, the limiter and the provider, answered 200."""
    started = time.monotonic()
    body = {**BODY, "max_tokens": 1}
    while time.monotonic() - started < limit_s:
        with contextlib.suppress(httpx.TransportError):
            answer = httpx.post(f"{edge}/v1/complete", json=body, headers=AUTH, timeout=5)
            if answer.status_code == 200:
                return time.monotonic() - started
        time.sleep(0.2)
    raise SmokeError(f"the edge did not answer within {limit_s:g} s")


def sse_data(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response."""
    return [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]


def smoke(edge_port: int, telemetry_port: int) -> list[str]:
    """Every check through the edge; returns one line per passed check."""
    edge = f"http://127.0.0.1:{edge_port}"
    passed = []
    with grpc.insecure_channel(f"127.0.0.1:{edge_port}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        events = list(
            stub.Generate(
                router_pb2.GenerateRequest(**BODY), metadata=list(AUTH.items()), timeout=30
            )
        )
    kinds = [e.WhichOneof("event") for e in events]
    check(kinds[0] == "metadata" and kinds[-1] == "complete", f"gRPC stream kinds {kinds}")
    check(events[-1].complete.usage.output_tokens == 8, "gRPC stream: 8 output tokens")
    passed.append(f"gRPC stream through Envoy: {len(events)} events, metadata..complete")

    with httpx.stream("POST", f"{edge}/v1/generate", json=BODY, headers=AUTH, timeout=30) as r:
        check(r.status_code == 200, f"SSE status {r.status_code}")
        check(r.headers["content-type"].startswith("text/event-stream"), "SSE content type")
        data = [json.loads(d) for d in sse_data(r)]
    check("metadata" in data[0] and "complete" in data[-1], "SSE metadata..complete")
    passed.append(f"SSE /v1/generate: {len(data)} events")

    body = {**BODY, "stream": True}
    with httpx.stream(
        "POST", f"{edge}/v1/chat/completions", json=body, headers=AUTH, timeout=30
    ) as r:
        check(r.status_code == 200, f"OpenAI stream status {r.status_code}")
        chunks = sse_data(r)
    check(chunks[-1] == "[DONE]", "OpenAI stream ends with [DONE]")
    first = json.loads(chunks[0])
    check(first["object"] == "chat.completion.chunk", "OpenAI chunk object")
    passed.append(f"OpenAI-compatible stream /v1/chat/completions: {len(chunks)} chunks")

    refused = httpx.post(f"{edge}/v1/generate", json=BODY, timeout=10)
    check(refused.status_code == 401, f"no key: {refused.status_code}")
    passed.append("no API key: 401")

    wanted = {"sluice-envoy", "sluice-router", "sluice-provider"}
    services: set[str] = set()
    sent = 0
    with grpc.insecure_channel(f"127.0.0.1:{telemetry_port}") as channel:
        telemetry = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        deadline = time.monotonic() + 120
        # Envoy's first span export failed when telemetry was not listening yet (a pod's
        # containers start in parallel) and was dropped, not retried (its stats showed
        # cluster.telemetry.upstream_cx_connect_fail); its tracer now retries for up to
        # 5 s (services/sluice/launcher/envoy/tracing.py). Export stays best effort, so a
        # trace that stays incomplete for 30 s is followed by a new one, and Envoy's
        # export counters are printed: the check is that one whole trace, Envoy's, the
        # router's and the provider's spans, reaches the store, and the line says how
        # many traced requests it took.
        while time.monotonic() < deadline and not wanted <= services:
            trace_id, parent = os.urandom(16).hex(), os.urandom(8).hex()
            done = httpx.post(
                f"{edge}/v1/complete",
                json=BODY,
                headers={**AUTH, "traceparent": f"00-{trace_id}-{parent}-01"},
                timeout=30,
            )
            sent += 1
            check(done.status_code == 200, f"/v1/complete status {done.status_code}")
            services = set()
            # Each part exports on its own schedule (Envoy batches): wait for all three.
            wait_until = min(deadline, time.monotonic() + 30)
            while time.monotonic() < wait_until and not wanted <= services:
                with contextlib.suppress(grpc.RpcError):
                    reply = telemetry.GetTrace(
                        telemetry_pb2.GetTraceRequest(trace_id=trace_id), timeout=5
                    )
                    services = {span.service_name for span in reply.spans}
                time.sleep(0.2)
            if not wanted <= services:
                print(f"trace {trace_id} incomplete after 30 s: {sorted(services)}")
                print(envoy_export_stats())
    check(wanted <= services, f"trace {services} after {sent} traced requests")
    passed.append(f"one trace stored, spans from {sorted(services)} ({sent} traced requests)")
    return passed


def envoy_export_stats() -> str:
    """Envoy's counters of its span export that moved (tracer and telemetry cluster
    requests and connections), read from its admin port inside the pod."""
    shown = podman(
        "exec",
        f"{POD_NAME}-envoy",
        "python3",
        "-c",
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:9901/stats').read().decode())",
        check_rc=False,
    )
    if shown.returncode != 0:
        return f"Envoy's stats unavailable: {shown.stderr.strip()}"
    lines = [
        line
        for line in shown.stdout.splitlines()
        if (
            line.startswith("tracing.")
            or (line.startswith("cluster.telemetry.") and ("rq" in line or "cx" in line))
        )
        and not line.endswith(": 0")
    ]
    return "Envoy's export stats:\n  " + "\n  ".join(lines or ["(none moved)"])


def hardening() -> list[str]:
    """Every container of the Pod runs as uid 10001 on a read-only root filesystem."""
    parts = ("router", "limiter", "provider", "telemetry", "envoy")
    for part in parts:
        shown = podman(
            "inspect",
            f"{POD_NAME}-{part}",
            "--format",
            "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}",
        ).stdout.split()
        check(shown[0] == "true", f"{part}: read-only root filesystem ({shown})")
        check(shown[1].split(":")[0] == "10001", f"{part}: runs as uid 10001 ({shown})")
    return [f"{len(parts)} containers: uid 10001, read-only root filesystem"]


def published(edge_port: int, telemetry_port: int) -> list[str]:
    """The pod publishes the edge and telemetry's port on loopback, and nothing else
    (podman 4.3 would publish every declared containerPort on all host addresses)."""
    inspected = json.loads(podman("pod", "inspect", POD_NAME).stdout)
    bindings = (inspected[0] if isinstance(inspected, list) else inspected)["InfraConfig"][
        "PortBindings"
    ]
    found = {
        (binding["HostIp"], int(binding["HostPort"]))
        for ports in bindings.values()
        for binding in ports
    }
    expected = {("127.0.0.1", edge_port), ("127.0.0.1", telemetry_port)}
    check(found == expected, f"published ports {sorted(found)}, expected {sorted(expected)}")
    return ["published: the edge and telemetry only, on 127.0.0.1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="localhost/sluice:latest")
    args = parser.parse_args()
    edge_port, telemetry_port = free_port(), free_port()
    manifests = prepared_pod(args.image, edge_port, telemetry_port)
    started = time.monotonic()
    try:
        with played(manifests):
            play_s = time.monotonic() - started
            serving_s = wait_serving(f"http://127.0.0.1:{edge_port}")
            print(f"kube play returned in {play_s:.1f} s; SERVING {play_s + serving_s:.1f} s "
                  "after kube play started")  # fmt: skip
            checks = [*hardening(), *published(edge_port, telemetry_port)]
            for line in [*checks, *smoke(edge_port, telemetry_port)]:
                print(f"ok  {line}")
            stop_started = time.monotonic()
            podman("pod", "stop", POD_NAME)
            print(f"podman pod stop (SIGTERM through tini, drain): "
                  f"{time.monotonic() - stop_started:.1f} s")  # fmt: skip
    except SmokeError as failure:
        print(f"smoke test failed: {failure}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        print(f"smoke test failed: gRPC {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"podman {' '.join(err.cmd[1:3])} failed: {err.stderr.strip()}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
