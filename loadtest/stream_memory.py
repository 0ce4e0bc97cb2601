"""Router memory per open stream: 1,000 idle streams, then 1,000 stalled ones.

Starts a limiter and a router as separate processes on free loopback ports (tracing
off), and a stand-in provider (this script with --provider-port: a real gRPC
ProviderService whose deltas are always 64 bytes, however loaded it is; the simulated
back end sends what fell due since its last tick in one delta, which under a 1,000-stream
load is most of the answer at once), then, from this process:

* **idle**: N gRPC Generate streams on a back end that sends one delta every 2 s; each
  client reads everything. Measured once every stream has its first token.
* **stalled**: N gRPC Generate streams on a back end that sends a 640 KB answer in 64-byte
  deltas as fast as flow control lets it; each client reads the first event and then
  nothing. Measured once the provider has stopped sending (its CPU flat), i.e.
  backpressure holds every stream.
* **stalled-sse**: the same through the OpenAI-compatible SSE listener, with raw
  sockets that read the response head and then nothing.

Prints the router's RSS (from /proc) before and with the streams open, and the
difference per stream. Bounded: about a minute in all.

    python loadtest/stream_memory.py [--streams 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.bench import free_ports
from sluice.common.v1 import common_pb2
from sluice.provider.v1 import provider_pb2, provider_pb2_grpc
from sluice.router.v1 import router_pb2, router_pb2_grpc

KEY = "sk-sluice-dev"
AUTH = (("authorization", f"Bearer {KEY}"),)
ANSWER_TOKENS = 10_000  # max_tokens of every request
DELTA = "sluice " * 8 + "gateway "  # 64 bytes
FLOOD_DELTAS = 10_000  # 640 KB: more than every buffer on the way together
CHANNELS = 10  # client connections the streams are spread over
WAVE = 100  # streams opened together


def config(ports: dict[str, int]) -> dict[str, Any]:
    def server(name: str) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": ports[name],
            "metrics_port": ports[f"{name}_metrics"],
            "shutdown_grace_s": 1.0,
        }

    return {
        "tracing": {"enabled": False},
        # Plaintext, said explicitly: the stand-in provider below is a bare gRPC server, and
        # the figure is the router's memory per stream, not TLS's.
        "security": {"mtls": False},
        "router": {
            "server": server("router"),
            "dev_mode": True,  # the load uses the public development key
            "streams": {"max_concurrent_streams": 100_000},  # one key opens them all
            "http_api": {"host": "127.0.0.1", "port": ports["router_http"]},
            "limiter_address": f"127.0.0.1:{ports['limiter']}",
            "provider_address": f"127.0.0.1:{ports['provider']}",
            "max_tokens_limit": ANSWER_TOKENS,
            "resilience": {
                "bulkhead": {"max_concurrent": 100_000},
                "local_limit_rps": 1e6,
                "cache": {"enabled": False},
            },
            "request_timeout_s": 600,
            # Every stream admitted at once: no queue, no concurrency pool in the way.
            "admission": {"enabled": False},
            "limiter_timeout_ms": 10_000,
            "models": {
                "idle": {"backends": [{"backend": "trickle"}]},
                "flood": {"backends": [{"backend": "flood"}]},
            },
        },
        "limiter": {
            "server": server("limiter"),
            "per_key": {"capacity": 1e9, "refill_per_second": 1e9},
        },
    }


class StandInProvider(provider_pb2_grpc.ProviderServiceServicer):
    """`trickle`: one delta every 2 s; `flood`: FLOOD_DELTAS deltas as fast as it may.
    `produced` counts the flood deltas sent (gRPC accepted them)."""

    produced = 0

    async def Stream(  # noqa: N802 - gRPC method name
        self, request: provider_pb2.StreamRequest, context: Any
    ) -> AsyncIterator[provider_pb2.StreamEvent]:
        yield provider_pb2.StreamEvent(
            start=provider_pb2.StreamStart(backend=request.backend, model="stand-in")
        )
        delta = provider_pb2.StreamEvent(delta=provider_pb2.TokenDelta(text=DELTA, token_count=8))
        count = FLOOD_DELTAS if request.backend == "flood" else 1000
        flood = request.backend == "flood"
        for _ in range(count):
            yield delta
            if flood:
                StandInProvider.produced += 1
            else:
                await asyncio.sleep(2.0)
        yield provider_pb2.StreamEvent(
            end=provider_pb2.StreamEnd(
                finish_reason=common_pb2.FINISH_REASON_STOP,
                usage=common_pb2.Usage(input_tokens=8, output_tokens=8 * count),
            )
        )


async def serve_provider(port: int, count_file: Path) -> None:
    server = grpc.aio.server()
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(StandInProvider(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        count_file.write_text(str(StandInProvider.produced))  # noqa: ASYNC240 - tiny, local
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    await server.stop(0)


def produced(workdir: Path) -> int:
    """Flood deltas the stand-in provider has sent so far."""
    with contextlib.suppress(OSError, ValueError):
        return int((workdir / "produced").read_text())
    return 0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_ticks(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


@contextlib.contextmanager
def services(workdir: Path) -> Iterator[tuple[dict[str, int], dict[str, subprocess.Popen[bytes]]]]:
    names = ("router", "limiter", "provider")
    ports = dict(
        zip(
            (*names, *(f"{n}_metrics" for n in names), "router_http"),
            free_ports(7),
            strict=True,
        )
    )
    path = workdir / "memory.yaml"
    path.write_text(yaml.safe_dump(config(ports)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["SLUICE_CONFIG"] = str(path)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("limiter", "provider", "router"):
            log = (workdir / f"{name}.log").open("wb")
            command = (
                [
                    sys.executable,
                    __file__,
                    "--provider-port",
                    str(ports["provider"]),
                    "--count-file",
                    str(workdir / "produced"),
                ]
                if name == "provider"
                else [sys.executable, "-m", f"sluice.{name}"]
            )
            processes[name] = subprocess.Popen(  # noqa: S603 - our own services
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        yield ports, processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await router_pb2_grpc.RouterServiceStub(channel).ListModels(
                    router_pb2.ListModelsRequest(), metadata=AUTH, timeout=1
                )
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)
    raise RuntimeError("router not ready in 30 s")


async def settle(pid: int, *, quiet_ticks: int = 2, window_s: float = 1.0) -> None:
    """Wait (at most 10 s) until `pid` uses at most `quiet_ticks` of CPU per window."""
    deadline = time.monotonic() + 10
    last = cpu_ticks(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(window_s)
        now = cpu_ticks(pid)
        if now - last <= quiet_ticks:
            return
        last = now


def request(model: str, max_tokens: int) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model,
        max_tokens=max_tokens,
        messages=[{"role": "user", "content": "Tell me everything about sluices."}],
    )


async def grpc_streams(
    workdir: Path,
    port: int,
    streams: int,
    model: str,
    *,
    read_all: bool,
    router_pid: int,
    provider_pid: int,
) -> dict[str, float]:
    options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 1 << 24)]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(CHANNELS)
    ]
    first_data = 0
    calls = []
    before = rss_bytes(router_pid)

    async def one(index: int, started: asyncio.Event) -> None:
        nonlocal first_data
        stub = router_pb2_grpc.RouterServiceStub(channels[index % CHANNELS])
        call = stub.Generate(request(model, ANSWER_TOKENS), metadata=AUTH)
        calls.append(call)
        seen_data = False
        try:
            while True:
                event = await call.read()
                if event is grpc.aio.EOF:
                    return
                if not seen_data and event.WhichOneof("event") == "data":
                    seen_data = True
                    first_data += 1
                    started.set()
                    if not read_all:
                        await asyncio.Event().wait()  # the client stalls: reads nothing more
        finally:
            started.set()  # failed streams count as settled too

    # Opened in waves of WAVE (each wave's first tokens before the next): a thousand
    # streams at once mostly measure the provider's start-up queue.
    tasks: list[asyncio.Future[None]] = []
    for wave in range(0, streams, WAVE):
        flags = []
        for index in range(wave, min(streams, wave + WAVE)):
            flag = asyncio.Event()
            flags.append(flag)
            tasks.append(asyncio.ensure_future(one(index, flag)))
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 60)
    failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
    try:
        if failed:
            print(f"  {len(failed)} of {streams} streams failed, e.g. {failed[0]!r:.200}")
        await settle(provider_pid)
        await settle(router_pid)
        during = rss_bytes(router_pid)
        sent = produced(workdir)
    finally:
        for call in calls:
            call.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
    return {"rss_before": before, "rss_during": during, "produced": sent, "open": first_data}


async def sse_streams(
    workdir: Path, port: int, streams: int, *, router_pid: int, provider_pid: int
) -> dict[str, float]:
    body = json.dumps(
        {
            "model": "flood",
            "max_tokens": ANSWER_TOKENS,
            "stream": True,
            "messages": [{"role": "user", "content": "Tell me everything about sluices."}],
        }
    ).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\n"
        b"content-type: application/json\r\n"
        + f"authorization: Bearer {KEY}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    )
    loop = asyncio.get_running_loop()
    before = rss_bytes(router_pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(streams):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, head + body)
            socks.append(sock)
        for sock in socks:  # the response head and a first chunk, then nothing more
            got = await asyncio.wait_for(loop.sock_recv(sock, 4096), 60)
            if not got.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected reply: {got[:200]!r}")
        await settle(provider_pid)
        await settle(router_pid)
        during = rss_bytes(router_pid)
        sent = produced(workdir)
    finally:
        for sock in socks:
            sock.close()
    return {"rss_before": before, "rss_during": during, "produced": sent, "open": streams}


async def measure(
    name: str, streams: int, workdir: Path, ports: dict[str, int], *, router: int, provider: int
) -> dict[str, Any]:
    """One scenario's figures (RSS before and with the streams open)."""
    if name == "stalled-sse":
        return await sse_streams(
            workdir, ports["router_http"], streams, router_pid=router, provider_pid=provider
        )
    return await grpc_streams(
        workdir,
        ports["router"],
        streams,
        "idle" if name == "idle" else "flood",
        read_all=name == "idle",
        router_pid=router,
        provider_pid=provider,
    )


async def run(streams: int, workdir: Path) -> list[dict[str, Any]]:
    """Each scenario on freshly started services, so one's heap does not hide the next's."""
    results = []
    for name in ("idle", "stalled", "stalled-sse"):
        with services(workdir) as (ports, processes):
            await wait_ready(ports["router"])
            started = time.monotonic()
            already = produced(workdir)
            figures = await measure(
                name,
                streams,
                workdir,
                ports,
                router=processes["router"].pid,
                provider=processes["provider"].pid,
            )
        delta = figures["rss_during"] - figures["rss_before"]
        result = {
            "scenario": name,
            "streams": streams,
            "rss_before_mb": round(figures["rss_before"] / 2**20, 1),
            "rss_during_mb": round(figures["rss_during"] / 2**20, 1),
            "open": figures["open"],
            "bytes_per_stream": round(delta / max(1, figures["open"])),
            "deltas_sent_per_stream": round(
                (figures["produced"] - already) / max(1, figures["open"])
            ),
            "seconds": round(time.monotonic() - started, 1),
        }
        results.append(result)
        print(
            f"{name:<12} {result['open']:>6} streams  router RSS"
            f" {result['rss_before_mb']:>7.1f}"
            f" -> {result['rss_during_mb']:>7.1f} MB  {result['bytes_per_stream']:>8} B/stream"
            f"  provider sent {result['deltas_sent_per_stream']:>5} of {FLOOD_DELTAS}"
            f" deltas/stream  ({result['seconds']} s)",
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--provider-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.provider_port:
        asyncio.run(serve_provider(args.provider_port, args.count_file))
        return 0
    print(
        f"stalled streams: {FLOOD_DELTAS} deltas of {len(DELTA)} bytes offered each; "
        "router RSS from /proc/<pid>/status"
    )
    with tempfile.TemporaryDirectory(prefix="sluice-memory-") as workdir:
        results = asyncio.run(asyncio.wait_for(run(args.streams, Path(workdir)), 240))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
