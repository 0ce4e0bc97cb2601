"""`sluice top` reads the telemetry service's breakdown and statistics."""

from __future__ import annotations

import asyncio
import os

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from sluice.launcher.cli import main
from sluice.telemetry.service import build_server
from tests.integration.test_telemetry import export_request
from tests.integration.test_telemetry_pipeline import free_port, span
from tests.support import ServiceStack, eventually, metric, telemetry_settings


@pytest.fixture(autouse=True)
def _plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    # The telemetry services here are plaintext (tests/support.py); mTLS: test_mtls.py.
    monkeypatch.setenv("SLUICE_TELEMETRY_SECURITY__MTLS", "false")


async def test_top_prints_slowest_operations_and_time_per_kind(
    stack: ServiceStack, capsys: pytest.CaptureFixture[str]
) -> None:
    host = await stack.start(build_server(telemetry_settings()))
    receiver = trace_service_pb2_grpc.TraceServiceStub(stack.channel(host))
    for _ in range(3):
        trace_id, root = os.urandom(16), os.urandom(8)
        await receiver.Export(
            export_request(
                "sluice-router", span(trace_id, span_id=root, name="Generate", duration_ms=100)
            )
        )
        await receiver.Export(
            export_request(
                "sluice-provider", span(trace_id, parent=root, name="Stream", duration_ms=80)
            )
        )
    await eventually(
        lambda: metric(host.metrics_port, "sluice_telemetry_traces_total", decision="kept_sampled"),
        lambda value: value == 3,
    )

    code = await asyncio.to_thread(main, ["top", "--address", f"127.0.0.1:{host.port}"])

    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"sluice top: last 60 s, from telemetry at 127.0.0.1:{host.port}"
    slowest = lines[lines.index("SLOWEST OPERATIONS") + 2 :][:2]
    assert slowest[0].split()[:4] == ["sluice-router", "Generate", "SERVER", "3"]
    assert float(slowest[0].split()[4]) == pytest.approx(100, abs=1)
    assert float(slowest[0].split()[5]) == pytest.approx(20, abs=1)  # 100 - 80 in the child
    assert slowest[1].split()[:2] == ["sluice-provider", "Stream"]
    kinds = lines[lines.index("WHERE TIME GOES (self time by span kind)") + 1]
    assert kinds.split()[:2] == ["SERVER", "100.0%"]
    assert "sluice-router Generate: 0.05 req/s, errors 0.0%" in out


async def test_top_reports_an_unreachable_telemetry_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    address = f"127.0.0.1:{free_port()}"
    code = await asyncio.to_thread(main, ["top", "--address", address])
    assert code == 1
    assert f"sluice top: telemetry at {address}: UNAVAILABLE" in capsys.readouterr().err
