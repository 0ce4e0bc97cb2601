"""Closed-loop load generator for RouterService/Generate.

N workers each keep one Generate stream in flight: as soon as one ends, the worker
starts the next, until a request count or a duration is reached (whichever comes
first; at least one must be given, and every call has a deadline, so a run always
ends by itself). Works against the router directly or through Envoy, which passes
native gRPC through.

Per request it records the total latency, the time to the first `data` event, whether
the stream ended with a `complete` event, and the gRPC code of any failure.

    python loadtest/generate_load.py --target 127.0.0.1:8080 -c 50 -d 10 --max-tokens 20

`--protocol` is for bench.py: the generator warms up, prints READY, waits for a line
on stdin, runs, prints DONE the moment the last stream ends (so the caller can sample
CPU counters), then prints `RESULT <json>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.tls import add_certs_option, find_certs
from loadtest.tls import channel as suite_channel
from sluice.common.v1 import common_pb2
from sluice.router.v1 import router_pb2, router_pb2_grpc

DEFAULT_KEY = "sk-sluice-dev"
DEFAULT_PROMPT = "Write one short sentence about water gates."
# A stream that ends without a `complete` event and without a failing status.
NO_COMPLETE = "NO_COMPLETE"


@dataclass(slots=True)
class RequestRecord:
    """What one Generate stream did."""

    total_s: float
    """From the call being issued to the stream's end."""
    ttft_s: float | None
    """From the call being issued to the first `data` event; None when none came."""
    completed: bool
    """The stream ended with a `complete` event and an OK status."""
    code: str | None
    """gRPC status name of a failed stream, NO_COMPLETE, or None on success."""
    data_events: int = 0
    """`data` events received."""


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LoadResult:
    """Records of one run plus the generator's own cost."""

    target: str
    concurrency: int
    records: list[RequestRecord]
    wall_s: float
    """From the first call to the end of the last stream."""
    cpu_s: float
    """The generator process's own user+system CPU during the measured phase."""
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """Figures as a JSON-ready dict; latencies in milliseconds."""
        n = len(self.records)
        totals = sorted(r.total_s * 1000.0 for r in self.records if r.completed)
        ttfts = sorted(
            r.ttft_s * 1000.0 for r in self.records if r.completed and r.ttft_s is not None
        )
        failed = sum(1 for r in self.records if not r.completed)
        events = sum(r.data_events for r in self.records)

        def pcts(values: list[float]) -> dict[str, float | None]:
            # None rather than NaN when nothing completed: NaN is not valid JSON.
            return {
                f"p{p}": round(percentile(values, p), 3) if values else None for p in (50, 95, 99)
            }

        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "requests": n,
            "completed": n - failed,
            "wall_s": round(self.wall_s, 3),
            "rps": round(n / self.wall_s, 1) if self.wall_s > 0 else 0.0,
            "latency_ms": pcts(totals),
            "ttft_ms": pcts(ttfts),
            "errors": failed,
            "error_rate": round(failed / n, 4) if n else 0.0,
            "errors_by_code": dict(self.errors),
            "data_events_per_request": round(events / n, 2) if n else 0.0,
            "loadgen_cpu_s": round(self.cpu_s, 3),
            "loadgen_cpu_ms_per_request": round(self.cpu_s * 1000.0 / n, 3) if n else 0.0,
        }

    def format(self) -> str:
        """A few human-readable lines."""
        s = self.summary()

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        lat, ttft = s["latency_ms"], s["ttft_ms"]
        codes = ", ".join(f"{k}={v}" for k, v in sorted(s["errors_by_code"].items())) or "none"
        return "\n".join(
            [
                f"target {s['target']}  concurrency {s['concurrency']}",
                f"requests {s['requests']} in {s['wall_s']:.2f} s = {s['rps']:.1f} req/s",
                f"latency ms  p50 {ms(lat['p50'])}  p95 {ms(lat['p95'])}  p99 {ms(lat['p99'])}",
                f"TTFT ms     p50 {ms(ttft['p50'])}  p95 {ms(ttft['p95'])}  p99 {ms(ttft['p99'])}",
                f"errors {s['errors']} ({s['error_rate']:.2%}): {codes}",
                f"data events/request {s['data_events_per_request']}  "
                f"generator CPU {s['loadgen_cpu_ms_per_request']:.3f} ms/request",
            ]
        )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads, incl. gRPC's core
    return usage.ru_utime + usage.ru_stime


def build_request(prompt: str, max_tokens: int, model: str) -> router_pb2.GenerateRequest:
    """The request every worker sends."""
    return router_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.Message(role="user", content=prompt)],
        max_tokens=max_tokens,
    )


async def _one(
    stub: router_pb2_grpc.RouterServiceStub,
    request: router_pb2.GenerateRequest,
    metadata: tuple[tuple[str, str], ...],
    timeout_s: float,
) -> RequestRecord:
    perf = time.perf_counter
    started = perf()
    ttft: float | None = None
    completed = False
    code: str | None = None
    data_events = 0
    call = stub.Generate(request, metadata=metadata, timeout=timeout_s)
    try:
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "data":
                data_events += 1
                if ttft is None:
                    ttft = perf() - started
            elif kind == "complete":
                completed = True
    except grpc.aio.AioRpcError as err:
        code = err.code().name
        completed = False
    except asyncio.CancelledError:
        call.cancel()
        raise
    if code is None and not completed:
        code = NO_COMPLETE
    return RequestRecord(perf() - started, ttft, completed, code, data_events)


async def _one_http(
    session: Any,
    url: str,
    body: bytes,
    headers: dict[str, str],
    openai: bool,
) -> RequestRecord:
    """One stream over HTTP through Envoy: Sluice's SSE (`/v1/generate`) or OpenAI's."""
    perf = time.perf_counter
    started = perf()
    ttft: float | None = None
    completed = False
    code: str | None = None
    data_events = 0
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                code = f"HTTP_{response.status}"
                await response.read()
            else:
                async for raw in response.content:
                    if not raw.startswith(b"data: "):
                        continue
                    if openai:
                        if raw.startswith(b"data: [DONE]"):
                            completed = True
                        elif b'"content":"' in raw and b'"content":""' not in raw:
                            data_events += 1
                        elif raw.startswith(b'data: {"error"'):
                            code = "ERROR_EVENT"
                    elif b'"data":' in raw:
                        data_events += 1
                    elif b'"complete":' in raw:
                        completed = True
                    elif b'"error":' in raw:
                        code = "ERROR_EVENT"
                    if data_events == 1 and ttft is None:
                        ttft = perf() - started
    except (OSError, TimeoutError) as err:
        code = type(err).__name__
    if code is None and not completed:
        code = NO_COMPLETE
    return RequestRecord(perf() - started, ttft, completed, code, data_events)


async def run_load(  # noqa: PLR0917 - positional order is the documented API
    target: str,
    concurrency: int = 1,
    requests: int | None = None,
    duration_s: float | None = 10.0,
    max_tokens: int = 20,
    prompt: str = DEFAULT_PROMPT,
    *,
    model: str = "default",
    api_key: str = DEFAULT_KEY,
    timeout_s: float = 30.0,
    warmup: int | None = None,
    channels: int = 1,
    certs: Path | None = None,
    before_start: Callable[[], Awaitable[None]] | None = None,
    after_end: Callable[[], None] | None = None,
    transport: str = "grpc",
) -> LoadResult:
    """Run `concurrency` closed-loop workers until `requests` calls or `duration_s` passes.

    `warmup` calls (default: two per worker) go first and are not recorded, so channel
    set-up and first-call costs stay out of the figures. `before_start` is awaited after
    the warm-up and `after_end` called as soon as the last stream ends (bench.py samples
    CPU counters there). `certs` (the suite's certificate directory) dials the router
    itself over mutual TLS as the operator; None is plaintext (the Envoy edge).
    """
    if requests is None and duration_s is None:
        raise ValueError("give requests, duration_s or both: a run must be bounded")
    if concurrency < 1 or channels < 1:
        raise ValueError("concurrency and channels must be at least 1")
    request = build_request(prompt, max_tokens, model)
    metadata = (("authorization", f"Bearer {api_key}"),)
    options = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own connection
    grpc_transport = transport == "grpc"
    opened = (
        [suite_channel(target, certs, "router", options=options) for _ in range(channels)]
        if grpc_transport
        else []
    )
    stubs = [router_pb2_grpc.RouterServiceStub(channel) for channel in opened]
    session: Any = None
    if not grpc_transport:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )
        openai = transport == "openai"
        url = f"http://{target}/v1/{'chat/completions' if openai else 'generate'}"
        payload: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
        if openai:
            payload["stream"] = True
        body = json.dumps(payload).encode()
        headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}

    def one(index: int) -> Awaitable[RequestRecord]:
        if grpc_transport:
            return _one(stubs[index % channels], request, metadata, timeout_s)
        return _one_http(session, url, body, headers, openai)

    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), timeout=timeout_s)
        warm = concurrency * 2 if warmup is None else warmup
        if warm > 0:
            # Same concurrency as the run, so server-side pools are as warm as they get.
            warm_jobs = [one(i) for i in range(warm)]
            gate = asyncio.Semaphore(concurrency)

            async def gated(job: Awaitable[RequestRecord]) -> RequestRecord:
                async with gate:
                    return await job

            await asyncio.gather(*(gated(job) for job in warm_jobs))
        if before_start is not None:
            await before_start()

        records: list[RequestRecord] = []
        errors: Counter[str] = Counter()
        limit = requests if requests is not None else sys.maxsize
        issued = 0
        cpu_started = _cpu_seconds()
        started = time.perf_counter()
        ends_at = started + duration_s if duration_s is not None else math.inf

        async def worker(index: int) -> None:
            nonlocal issued
            while issued < limit and time.perf_counter() < ends_at:
                issued += 1
                record = await one(index)
                records.append(record)
                if record.code is not None:
                    errors[record.code] += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_started
        if after_end is not None:
            after_end()
        return LoadResult(target, concurrency, records, wall, cpu, errors)
    finally:
        for channel in opened:
            await channel.close()
        if session is not None:
            await session.close()


def _run(main: Coroutine[Any, Any, LoadResult], use_uvloop: bool) -> LoadResult:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop ships on Linux
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8080", help="host:port (Envoy or router)")
    parser.add_argument("-c", "--concurrency", type=int, default=10, help="streams in flight")
    parser.add_argument("-n", "--requests", type=int, help="stop after this many calls")
    parser.add_argument("-d", "--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--model", default="default", help="router model alias")
    parser.add_argument("--api-key", default=DEFAULT_KEY)
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, s")
    parser.add_argument("--warmup", type=int, help="unrecorded calls first (default 2/worker)")
    parser.add_argument("--channels", type=int, default=1, help="HTTP/2 connections to use")
    parser.add_argument(
        "--transport",
        choices=("grpc", "sse", "openai"),
        default="grpc",
        help="native gRPC, SSE /v1/generate or OpenAI /v1/chat/completions (HTTP/1.1)",
    )
    add_certs_option(parser)  # to dial the router itself (mTLS) rather than Envoy
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    parser.add_argument("--json", help="also write the summary as JSON to this file")
    parser.add_argument(
        "--protocol", action="store_true", help="READY/go/DONE/RESULT lines for bench.py"
    )
    args = parser.parse_args(argv)
    if args.requests is None and args.duration is None:
        args.duration = 10.0
    return args


async def _main(args: argparse.Namespace) -> LoadResult:
    before_start: Callable[[], Awaitable[None]] | None = None
    after_end: Callable[[], None] | None = None
    if args.protocol:

        async def wait_for_go() -> None:
            print("READY", flush=True)
            loop = asyncio.get_running_loop()
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                raise SystemExit("stdin closed before go")

        def done() -> None:
            print("DONE", flush=True)

        before_start, after_end = wait_for_go, done
    return await run_load(
        args.target,
        args.concurrency,
        args.requests,
        args.duration,
        args.max_tokens,
        args.prompt,
        model=args.model,
        api_key=args.api_key,
        timeout_s=args.timeout,
        warmup=args.warmup,
        channels=args.channels,
        certs=find_certs(args.certs) if args.certs else None,
        before_start=before_start,
        after_end=after_end,
        transport=args.transport,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run once, print the figures; exit status 1 when any request failed."""
    args = _parse(argv)
    result = _run(_main(args), use_uvloop=not args.no_uvloop)
    summary = result.summary()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2)
    if args.protocol:
        print("RESULT " + json.dumps(summary), flush=True)
    else:
        print(result.format())
    return 0 if summary["requests"] and not summary["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
