"""What one router holds, as the start-up banner says it (docs/runtime.md, "Capacity")."""

from __future__ import annotations

from sluice.launcher.settings import SuiteSettings


def capacity_lines(settings: SuiteSettings) -> list[str]:
    """Banner lines: a router's concurrent-stream ceiling per back end and why, and what
    Envoy admits towards the routers."""
    admission = settings.router.admission
    adaptive = admission.adaptive
    if not admission.enabled:
        ceiling = settings.router.resilience.bulkhead.max_concurrent
        why = "router.resilience.bulkhead.max_concurrent; admission off"
    elif adaptive.max_limit is not None:
        ceiling, why = adaptive.ceiling, "router.admission.adaptive.max_limit"
    else:
        ceiling = adaptive.ceiling
        why = f"{adaptive.memory_budget_mb} MiB budget / {adaptive.stream_memory_kb} KiB per stream"
    lines = [f"  {'capacity':<12}  one router holds up to {ceiling:,} streams per back end ({why})"]
    detail = []
    if admission.enabled:
        detail.append(
            f"limit starts at {adaptive.initial_limit}, grows while first tokens come within "
            f"{adaptive.target_ttft_ms:g} ms"
        )
    if settings.envoy.enabled:
        detail.append(f"Envoy admits {settings.envoy.circuit_breakers.max_requests:,}")
    if detail:
        lines.append(" " * 16 + "; ".join(detail))
    return lines
