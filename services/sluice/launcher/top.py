"""`sluice top`: the slowest operations and where time goes, from the telemetry service."""

from __future__ import annotations

import grpc

from sluice.core.grpcx.tls import ClientTls
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

BAR_WIDTH = 30


def _kind(name: str) -> str:
    return name.removeprefix("SPAN_KIND_")


def render(
    address: str,
    stats: telemetry_pb2.GetStatsResponse,
    breakdown: telemetry_pb2.GetBreakdownResponse,
) -> str:
    """The report as text (pure: tested without a network)."""
    lines = [f"sluice top: last {breakdown.window_s} s, from telemetry at {address}", ""]
    lines.append("SLOWEST OPERATIONS")
    if not breakdown.slowest:
        lines.append("  (no spans in the window)")
    else:
        width = max(len(f"{op.service_name} {op.operation}") for op in breakdown.slowest)
        lines.append(
            f"  {'operation':<{width}}  {'kind':<8} {'count':>7} {'p99 ms':>10} {'self ms':>9}"
        )
        for op in breakdown.slowest:
            name = f"{op.service_name} {op.operation}"
            lines.append(
                f"  {name:<{width}}  {_kind(op.kind):<8} {op.count:>7} "
                f"{op.p99_ms:>10.1f} {op.mean_self_ms:>9.1f}"
            )
    lines += ["", "WHERE TIME GOES (self time by span kind)"]
    for share in breakdown.kinds:
        bar = "#" * round(share.share * BAR_WIDTH)
        lines.append(
            f"  {_kind(share.kind):<9} {share.share * 100:5.1f}%  {bar:<{BAR_WIDTH}} "
            f"{share.self_time_ms:.1f} ms"
        )
    if not breakdown.kinds:
        lines.append("  (no spans in the window)")
    lines += ["", f"RPCS (Apdex T = {stats.apdex_t_ms:g} ms)"]
    for rpc in stats.operations:
        lines.append(
            f"  {rpc.service_name} {rpc.operation}: {rpc.request_rate:.2f} req/s, "
            f"errors {rpc.error_rate * 100:.1f}%, p50/p95/p99 {rpc.p50_ms:.1f}/"
            f"{rpc.p95_ms:.1f}/{rpc.p99_ms:.1f} ms, apdex {rpc.apdex:.2f}"
        )
    if not stats.operations:
        lines.append("  (no requests in the window)")
    return "\n".join(lines) + "\n"


def fetch(
    address: str,
    window_s: int,
    limit: int,
    timeout_s: float = 5.0,
    tls: ClientTls | None = None,
) -> str:
    """Ask the telemetry service (as the operator under mtls) and render the report."""
    channel = (
        grpc.insecure_channel(address)
        if tls is None
        else grpc.secure_channel(address, tls.credentials, options=tls.options)
    )
    with channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        stats = stub.GetStats(telemetry_pb2.GetStatsRequest(window_s=window_s), timeout=timeout_s)
        breakdown = stub.GetBreakdown(
            telemetry_pb2.GetBreakdownRequest(window_s=window_s, limit=limit), timeout=timeout_s
        )
    return render(address, stats, breakdown)
