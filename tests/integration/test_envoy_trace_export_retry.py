"""Envoy's span export survives a telemetry service that is not listening yet.

Real Envoy, rendered by the suite with tracing on, exports to a port where nothing
listens (as when a pod's containers start in parallel, or telemetry restarts): the first
export fails to connect. The project's telemetry service then starts on that port, and
the retried export (the tracer's retry policy, launcher/envoy/tracing.py) delivers the
span. Envoy does not retry on its own: without the policy the span is lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import httpx
import yaml

from loadtest.chaos import free_ports
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.settings import load_suite
from sluice.telemetry.service import build_server as build_telemetry
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.e2e.conftest import start_envoy
from tests.support import ServiceStack, telemetry_settings


async def telemetry_stats(admin_port: int) -> dict[str, int]:
    """Envoy's `cluster.telemetry.*` counters that are not 0, from its admin /stats."""
    async with httpx.AsyncClient(timeout=2) as client:
        response = await client.get(
            f"http://127.0.0.1:{admin_port}/stats", params={"filter": r"^cluster\.telemetry\."}
        )
    stats = {}
    for line in response.text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit() and int(value):
            stats[name] = int(value)
    return stats


async def envoy_spans(
    stub: telemetry_pb2_grpc.TelemetryServiceStub, trace_id: str
) -> list[telemetry_pb2.Span]:
    """The trace's spans that Envoy exported, or [] while the trace is unknown."""
    try:
        response = await stub.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=trace_id), timeout=2)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        return []
    return [s for s in response.spans if s.service_name == "sluice-envoy"]


async def test_a_span_exported_before_telemetry_listens_arrives_once_it_does(
    stack: ServiceStack, tmp_path: Path
) -> None:
    edge, admin, telemetry_port, router, router_http = free_ports(5)
    config = tmp_path / "suite.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tracing": {"endpoint": f"127.0.0.1:{telemetry_port}", "sample_ratio": 1.0},
                # Plaintext: the in-process telemetry service (tests/support.py) serves it.
                "security": {"mtls": False},
                # Free ports where no router listens (not the defaults, which may be taken).
                "router": {"server": {"port": router}, "http_api": {"port": router_http}},
                "envoy": {"port": edge, "admin_port": admin},
            }
        )
    )
    envoy_file = tmp_path / "envoy.yaml"
    envoy_file.write_text(yaml.safe_dump(render(load_suite(config), descriptor_path())))
    # Built now, started later: binding its port is then all that is left to do.
    telemetry = build_telemetry(telemetry_settings(server={"port": telemetry_port}))
    envoy = await asyncio.to_thread(start_envoy, envoy_file, admin)
    try:
        assert envoy.poll() is None, "Envoy exited: it refused the rendered config"
        trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
        async with httpx.AsyncClient(timeout=5) as client:
            # No router runs: Envoy answers 503 itself, and still traces the request.
            response = await client.get(
                f"http://127.0.0.1:{edge}/v1/models",
                headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
            )
        assert response.status_code == 503, response.text

        # The batch is flushed within a second (tracing.py's flush_runtime); wait until its
        # export has failed to connect, so what follows can only be a retry.
        deadline = time.monotonic() + 5
        stats = await telemetry_stats(admin)
        while stats.get("cluster.telemetry.upstream_cx_connect_fail", 0) < 1:
            assert time.monotonic() < deadline, f"no failed export within 5 s: {stats}"
            await asyncio.sleep(0.02)
            stats = await telemetry_stats(admin)
        await stack.start(telemetry)

        stub = telemetry_pb2_grpc.TelemetryServiceStub(stack.channel(telemetry))
        deadline = time.monotonic() + 10
        spans = await envoy_spans(stub, trace_id)
        while not spans and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            spans = await envoy_spans(stub, trace_id)
        stats = await telemetry_stats(admin)
        assert [(s.kind, s.name, s.parent_span_id) for s in spans] == [
            ("SPAN_KIND_SERVER", "ingress", caller_span)
        ], stats
        assert stats.get("cluster.telemetry.upstream_rq_retry_success", 0) >= 1, stats
    finally:
        envoy.send_signal(signal.SIGTERM)
        envoy.wait(timeout=10)
