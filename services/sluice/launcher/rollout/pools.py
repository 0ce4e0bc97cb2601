"""Router pools: the replicas of one version of the router, and what a rollout needs to
start, check and stop them.

A pool is named by a colour (`blue` for the routers the suite started with, `green` for
the first candidate, then alternating), so `x-sluice-pool: green` and the `pool` label
of a candidate's metrics mean the same processes for the whole rollout. A candidate is a
suite YAML file and optionally another installation's `sluice` executable: its routers
run that installation's code with that file's router settings, but always the running
suite's limiter and telemetry; when the file's provider settings differ from the suite's
(other back ends, faults), the candidate also gets provider replicas of its own, so a
new model configuration is rolled out with the routers that use it (docs/deployment.md).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc

from sluice.common.v1 import common_pb2
from sluice.core.grpcx.tls import ClientTls
from sluice.launcher.envoy.pools import Endpoint
from sluice.launcher.parts import HEALTH_SERVICES, Part, grpc_serving, service_argv
from sluice.launcher.settings import SuiteSettings
from sluice.router.v1 import router_pb2, router_pb2_grpc

COLOURS = ("blue", "green")


def other_colour(name: str) -> str:
    """The name of the next candidate pool."""
    return COLOURS[1] if name == COLOURS[0] else COLOURS[0]


def free_port(host: str) -> int:
    """A port free on `host` now (the part binds it a moment later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class Replica:
    """One router process of a pool."""

    part: Part
    host: str
    grpc_port: int
    http_port: int | None
    metrics_port: int
    draining: bool = False

    @classmethod
    def of(cls, part: Part) -> Replica:
        """The replica a router part runs (its listeners named in `part.ports`)."""
        ports = {what: (host, port) for what, host, port in part.ports}
        host, grpc_port = ports["grpc"]
        http = ports.get("http")
        return cls(part, host, grpc_port, http[1] if http else None, ports["metrics"][1])

    @property
    def metrics_url(self) -> str:
        """Its /metrics."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def alive(self) -> bool:
        """Whether its process runs."""
        process = self.part.process
        return process is not None and process.poll() is None

    def describe(self) -> dict[str, object]:
        """For `sluice rollout status`."""
        process = self.part.process
        return {
            "name": self.part.name,
            "pid": process.pid if process is not None else None,
            "alive": self.alive(),
            "grpc": f"{self.host}:{self.grpc_port}",
            "http": f"{self.host}:{self.http_port}" if self.http_port else None,
            "metrics": self.metrics_url,
            "draining": self.draining,
        }


@dataclass
class Pool:
    """The replicas of one version, and its share of unpinned traffic."""

    name: str
    version: str
    share: float = 0.0
    replicas: list[Replica] = field(default_factory=list)
    helpers: list[Part] = field(default_factory=list)
    """Processes of its own besides the routers (a candidate's provider replicas)."""
    config: Path | None = None
    binary: Path | None = None

    def live(self) -> list[Replica]:
        """Replicas not being drained."""
        return [replica for replica in self.replicas if not replica.draining]

    def endpoints(self) -> list[Endpoint]:
        """Its replicas as Envoy's endpoints."""
        live = len(self.live())
        return [
            Endpoint(r.host, r.grpc_port, r.http_port, self.name, self.share, live, r.draining)
            for r in self.replicas
        ]

    def describe(self) -> dict[str, object]:
        """For `sluice rollout status`."""
        return {
            "name": self.name,
            "version": self.version,
            "share_percent": round(self.share * 100, 2),
            "config": str(self.config) if self.config else None,
            "binary": str(self.binary) if self.binary else None,
            "replicas": [replica.describe() for replica in self.replicas],
            "helpers": [helper.name for helper in self.helpers],
        }


def _command(binary: Path | None, service: str, config: Path) -> list[str]:
    if binary is None:
        return service_argv(service)
    return [str(binary), "serve", service, "--config", str(config)]


def provider_differs(suite: SuiteSettings, candidate: SuiteSettings) -> bool:
    """Whether the candidate's provider settings (back ends, faults) are not the suite's."""
    ignore = {"server", "replicas", "replica_ports"}
    return suite.provider.model_dump(exclude=ignore) != candidate.provider.model_dump(
        exclude=ignore
    )


def provider_part(
    pool: str,
    *,
    index: int,
    config: Path,
    binary: Path | None,
    suite: SuiteSettings,
    tls: ClientTls | None,
) -> Part:
    """A provider replica of a candidate pool, on free ports."""
    host = suite.provider.server.host
    port, metrics_port = free_port(host), free_port(host)
    return Part(
        f"provider-{pool}-{index}",
        _command(binary, "provider", config),
        suite.provider.server.shutdown_grace_s,
        role="provider",
        env={
            "SLUICE_CONFIG": str(config),
            "SLUICE_PROVIDER_SERVER__PORT": str(port),
            "SLUICE_PROVIDER_SERVER__METRICS_PORT": str(metrics_port),
            "SLUICE_PROVIDER_SERVER__POOL": pool,
            "SLUICE_PROVIDER_TRACING__ENDPOINT": suite.provider.tracing.endpoint,
        },
        ready=partial(grpc_serving, f"{host}:{port}", HEALTH_SERVICES["provider"], tls=tls),
        ports=[("grpc", host, port), ("metrics", host, metrics_port)],
    )


def router_part(
    pool: str,
    *,
    index: int,
    config: Path,
    binary: Path | None,
    suite: SuiteSettings,
    provider_address: str,
    tls: ClientTls | None,
) -> Part:
    """A router replica of a candidate pool on free ports, using the suite's limiter and
    telemetry and `provider_address`; its metrics carry `pool`."""
    router = suite.router
    host = router.server.host
    port, metrics_port = free_port(host), free_port(host)
    env = {
        "SLUICE_CONFIG": str(config),
        "SLUICE_ROUTER_SERVER__PORT": str(port),
        "SLUICE_ROUTER_SERVER__METRICS_PORT": str(metrics_port),
        "SLUICE_ROUTER_SERVER__POOL": pool,
        "SLUICE_ROUTER_LIMITER_ADDRESS": router.limiter_address,
        "SLUICE_ROUTER_PROVIDER_ADDRESS": provider_address,
        "SLUICE_ROUTER_TRACING__ENDPOINT": router.tracing.endpoint,
    }
    if router.dev_mode:  # `sluice up --dev` holds for the candidates it starts too
        env["SLUICE_ROUTER_DEV_MODE"] = "true"
    ports = [("grpc", host, port), ("metrics", host, metrics_port)]
    if router.http_api.enabled:
        http_port = free_port(router.http_api.host)
        env["SLUICE_ROUTER_HTTP_API__PORT"] = str(http_port)
        ports.append(("http", router.http_api.host, http_port))
    return Part(
        f"router-{pool}-{index}",
        _command(binary, "router", config),
        router.server.shutdown_grace_s,
        role="router",
        env=env,
        ready=partial(grpc_serving, f"{host}:{port}", HEALTH_SERVICES["router"], tls=tls),
        ports=ports,
    )


def smoke_direct(replica: Replica, api_key: str, model: str, tls: ClientTls | None) -> str | None:
    """One Generate stream straight to the replica; None when it ends with `complete`,
    else what went wrong."""
    target = f"{replica.host}:{replica.grpc_port}"
    channel = (
        grpc.insecure_channel(target)
        if tls is None
        else grpc.secure_channel(target, tls.credentials, options=tls.options)
    )
    request = router_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.Message(role="user", content="rollout smoke test")],
        max_tokens=8,
    )
    last = ""
    with channel:
        try:
            for event in router_pb2_grpc.RouterServiceStub(channel).Generate(
                request, metadata=[("authorization", f"Bearer {api_key}")], timeout=30
            ):
                last = event.WhichOneof("event") or ""
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"
    return None if last == "complete" else f"stream ended with {last or 'nothing'}"


def smoke_pinned(edge: str, pool: str, api_key: str, model: str) -> str | None:
    """One SSE stream through Envoy pinned to `pool` (`x-sluice-pool`); None when it ends
    with a `complete` event, else what went wrong."""
    message = {"role": "user", "content": "rollout smoke test"}
    body = json.dumps({"model": model, "messages": [message], "max_tokens": 8}).encode()
    request = urllib.request.Request(  # noqa: S310 - our own loopback edge
        f"{edge}/v1/generate",
        data=body,
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {api_key}",
            "x-sluice-pool": pool,
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  # nosec B310
            text = response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return f"through Envoy: HTTP {err.code}: {err.read()[:200].decode(errors='replace')}"
    except OSError as err:
        return f"through Envoy: {err}"
    events = [line for line in text.splitlines() if line.startswith("data: ")]
    if events and '"complete"' in events[-1]:
        return None
    return f"through Envoy: stream ended with {events[-1][:120] if events else 'nothing'}"
