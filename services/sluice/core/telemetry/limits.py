"""The CPU and memory limits this process runs under, as Prometheus gauges.

The SLA alerts compare usage with the configured limits (CPU over 70%, memory over 80%:
deploy/prometheus/rules/sla.rules.yml). A container's limits are its cgroup's: cgroup v2
`cpu.max` and `memory.max`, or v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us` and
`memory.limit_in_bytes`. An unlimited resource exports no sample, so nothing alerts on a
process without a limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# cgroup v1 reports "no limit" as a huge number near 2^63 (rounded to the page size).
_UNLIMITED = 1 << 60


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_paths(root: Path, proc_cgroup: Path) -> dict[str, str]:
    """The process's cgroup path per controller ("" for the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _candidates(base: Path, path: str) -> list[Path]:
    # Inside a container's cgroup namespace the own path may not exist under the mount:
    # the mount itself is the container's cgroup then.
    own = base / path.lstrip("/")
    return [own, base] if own != base else [base]


def cpu_limit_cores(root: Path, proc_cgroup: Path) -> float | None:
    """The CPU quota in cores, or None when unlimited or unknown."""
    paths = _own_paths(root, proc_cgroup)
    if "" in paths:
        for directory in _candidates(root, paths[""]):
            text = _read(directory / "cpu.max")
            if text is not None:
                quota, _, period = text.partition(" ")
                if quota == "max" or not period:
                    return None
                return int(quota) / int(period)
    if "cpu" in paths:
        for directory in _candidates(root / "cpu", paths["cpu"]):
            quota_text = _read(directory / "cpu.cfs_quota_us")
            period_text = _read(directory / "cpu.cfs_period_us")
            if quota_text is not None and period_text is not None:
                quota_us, period_us = int(quota_text), int(period_text)
                return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def memory_limit_bytes(root: Path, proc_cgroup: Path) -> int | None:
    """The memory limit in bytes, or None when unlimited or unknown."""
    paths = _own_paths(root, proc_cgroup)
    if "" in paths:
        for directory in _candidates(root, paths[""]):
            text = _read(directory / "memory.max")
            if text is not None:
                return None if text == "max" else int(text)
    if "memory" in paths:
        for directory in _candidates(root / "memory", paths["memory"]):
            text = _read(directory / "memory.limit_in_bytes")
            if text is not None:
                value = int(text)
                return None if value >= _UNLIMITED else value
    return None


class ResourceLimitsCollector(Collector):
    """Exports sluice_resource_limit_cpu_cores and sluice_resource_limit_memory_bytes."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        root: Path = Path("/sys/fs/cgroup"),
        proc_cgroup: Path = Path("/proc/self/cgroup"),
    ) -> None:
        self._root = root
        self._proc_cgroup = proc_cgroup
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read the limits at each scrape (they can change under a running container)."""
        cpu = cpu_limit_cores(self._root, self._proc_cgroup)
        if cpu is not None:
            yield GaugeMetricFamily(
                "sluice_resource_limit_cpu_cores",
                "CPU limit of this process's cgroup, in cores (absent when unlimited).",
                value=cpu,
            )
        memory = memory_limit_bytes(self._root, self._proc_cgroup)
        if memory is not None:
            yield GaugeMetricFamily(
                "sluice_resource_limit_memory_bytes",
                "Memory limit of this process's cgroup, in bytes (absent when unlimited).",
                value=memory,
            )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Nothing up front: whether a sample exists depends on the cgroup."""
        return iter(())
