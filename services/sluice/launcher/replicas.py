"""Where each replica of the router, limiter and provider listens, and how the parts that
call them reach every replica.

Replica i (0 for the first) of a part listens on the ports declared for it in
`supervisor.replica_ports` (the provider also reads `provider.replica_ports`), else on each
of the part's base ports + 100*i: with the defaults, router-2 takes gRPC 50151, metrics
9201 and HTTP 8190. Callers get one target naming every replica ("ipv4:a:p,b:q"), which
gRPC's round_robin policy balances with per-call failover (core/grpcx/channels.py); Envoy
lists each router replica as an endpoint of its clusters (launcher/envoy/clusters.py).
docs/runtime.md, "Replicas", describes it for operators.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sluice.launcher.names import REPLICATED
from sluice.launcher.settings import ReplicatedPart, SuiteSettings

PORT_STEP = 100
"""Offset between the ports of consecutive replicas when none are declared."""


class ReplicaConfigError(ValueError):
    """Replica listeners that cannot work (a clash, a port out of range, a host name)."""


@dataclass(frozen=True)
class Replica:
    """One process of a replicated part and its listeners."""

    role: str
    index: int
    host: str
    port: int
    metrics_port: int
    http_host: str = ""
    http_port: int | None = None
    """The router's OpenAI-compatible listener (None for other parts or when it is off)."""

    @property
    def name(self) -> str:
        """The part's name in logs, metrics and pid files: router, router-2, ..."""
        return self.role if self.index == 0 else f"{self.role}-{self.index + 1}"

    @property
    def address(self) -> str:
        """host:port of its gRPC listener."""
        return f"{self.host}:{self.port}"

    def listeners(self) -> list[tuple[str, str, int]]:
        """(what, host, port) of each listener it binds."""
        found = [("grpc", self.host, self.port), ("metrics", self.host, self.metrics_port)]
        if self.http_port is not None:
            found.append(("http", self.http_host, self.http_port))
        return found

    def env(self) -> dict[str, str]:
        """The environment that moves the service onto this replica's ports (environment
        variables override the suite's YAML file, core/config.py)."""
        prefix = f"SLUICE_{self.role.upper()}_"
        env = {
            f"{prefix}SERVER__PORT": str(self.port),
            f"{prefix}SERVER__METRICS_PORT": str(self.metrics_port),
        }
        if self.http_port is not None:
            env[f"{prefix}HTTP_API__PORT"] = str(self.http_port)
        return env


def count(settings: SuiteSettings, role: str) -> int:
    """How many processes of `role` the suite runs."""
    configured = settings.supervisor.replicas
    if role == "provider":
        return configured.get("provider", settings.provider.replicas)
    if role in REPLICATED:
        return configured.get(cast(ReplicatedPart, role), 1)
    return 1


def _shifted(port: int, index: int, what: str) -> int:
    if port == 0:  # a free port picked by the process itself
        return 0
    shifted = port + PORT_STEP * index
    if shifted > 65535:
        raise ReplicaConfigError(
            f"replica {index + 1}'s {what} port would be {shifted} (base {port} + "
            f"{PORT_STEP}*{index}): declare it in supervisor.replica_ports"
        )
    return shifted


def replicas(settings: SuiteSettings, role: str) -> list[Replica]:
    """Every replica of `role`, the first on the part's configured listeners."""
    http_api = settings.router.http_api
    if role == "router":
        server = settings.router.server
    elif role == "limiter":
        server = settings.limiter.server
    elif role == "provider":
        server = settings.provider.server
    else:
        raise ValueError(f"{role} is not replicated")
    declared = [
        (ports.port, ports.metrics_port, ports.http_port)
        for ports in settings.supervisor.replica_ports.get(cast(ReplicatedPart, role), [])
    ]
    if role == "provider" and not declared:
        declared = [(p.port, p.metrics_port, None) for p in settings.provider.replica_ports]
    found = []
    for index in range(count(settings, role)):
        http_port: int | None = None
        if index == 0:
            port, metrics_port = server.port, server.metrics_port
            if role == "router" and http_api.enabled:
                http_port = http_api.port
        else:
            explicit = declared[index - 1] if index - 1 < len(declared) else None
            port = explicit[0] if explicit else _shifted(server.port, index, "gRPC")
            metrics_port = (
                explicit[1] if explicit else _shifted(server.metrics_port, index, "metrics")
            )
            if role == "router" and http_api.enabled:
                given = explicit[2] if explicit else None
                http_port = given if given is not None else _shifted(http_api.port, index, "HTTP")
        found.append(
            Replica(
                role,
                index,
                server.host,
                port,
                metrics_port,
                http_host=http_api.host if role == "router" else "",
                http_port=http_port,
            )
        )
    return found


def _literal(host: str) -> str:
    """An address gRPC's ipv4:/ipv6: targets accept ("localhost" is loopback)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError as err:
        raise ReplicaConfigError(
            f"replicas listen on host {host!r}: name an IP address so one target can list "
            "every replica"
        ) from err
    return host


def target(found: Sequence[Replica]) -> str:
    """A gRPC target naming every replica: host:port for one, else "ipv4:a:p,b:q"
    (balanced round robin by core/grpcx/channels.py)."""
    if len(found) == 1:
        return found[0].address
    hosts = [_literal(replica.host) for replica in found]
    if all(":" in host for host in hosts):
        return "ipv6:" + ",".join(f"[{h}]:{r.port}" for h, r in zip(hosts, found, strict=True))
    return "ipv4:" + ",".join(f"{h}:{r.port}" for h, r in zip(hosts, found, strict=True))


def endpoints(found: Sequence[Replica], *, http: bool = False) -> list[tuple[str, int]]:
    """(host, port) of every replica's gRPC listener, or of its HTTP listener."""
    if http:
        return [(r.http_host, r.http_port) for r in found if r.http_port is not None]
    return [(r.host, r.port) for r in found]


def listeners(settings: SuiteSettings) -> list[tuple[str, str, str, int]]:
    """(owner, what, host, port) of every listener the suite's parts bind at fixed ports."""
    found: list[tuple[str, str, str, int]] = []
    for role in REPLICATED:
        for replica in replicas(settings, role):
            found += [(replica.name, *listener) for listener in replica.listeners()]
    telemetry = settings.telemetry.server
    found += [
        ("telemetry", "grpc", telemetry.host, telemetry.port),
        ("telemetry", "metrics", telemetry.host, telemetry.metrics_port),
    ]
    if settings.envoy.enabled:
        envoy = settings.envoy
        found += [("envoy", "edge", envoy.host, envoy.port)]
        found += [("envoy", "admin", "127.0.0.1", envoy.admin_port)]
    supervisor = settings.supervisor
    found.append(("supervisor", "metrics", supervisor.host, supervisor.metrics_port))
    if supervisor.store.port:
        found.append(("store", "redis", "127.0.0.1", supervisor.store.port))
    return [listener for listener in found if listener[3] != 0]


def clashes(settings: SuiteSettings) -> list[str]:
    """Two listeners of the suite on one port, each pair named (empty when none)."""
    seen: dict[int, tuple[str, str, str, int]] = {}
    found = []
    for listener in listeners(settings):
        owner, what, host, port = listener
        first = seen.setdefault(port, listener)
        if first is not listener:
            found.append(
                f"port {port}: {first[0]} {first[1]} ({first[2]}) and {owner} {what} ({host})"
            )
    return found


def problems(settings: SuiteSettings) -> list[str]:
    """Why the replicas' listeners cannot work as configured (empty when they can)."""
    try:
        found = [f"two listeners on one {clash}" for clash in clashes(settings)]
        for role in ("limiter", "provider"):
            target(replicas(settings, role))
    except ReplicaConfigError as err:
        return [str(err)]
    return found
