"""The cgroup CPU and memory limits exported for the SLA alerts (core/telemetry/limits.py)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from sluice.core.telemetry.limits import (
    ResourceLimitsCollector,
    cpu_limit_cores,
    memory_limit_bytes,
)


def tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    proc_cgroup = tmp_path / "proc-cgroup"
    proc_cgroup.write_text(proc)
    return root, proc_cgroup


def test_cgroup_v2_limits_are_read_from_the_own_cgroup(tmp_path: Path) -> None:
    root, proc = tree(
        tmp_path,
        "0::/kubepods/pod1/c1\n",
        {"kubepods/pod1/c1/cpu.max": "150000 100000", "kubepods/pod1/c1/memory.max": "536870912"},
    )
    assert cpu_limit_cores(root, proc) == 1.5
    assert memory_limit_bytes(root, proc) == 536870912
    registry = CollectorRegistry()
    ResourceLimitsCollector(registry, root=root, proc_cgroup=proc)
    assert registry.get_sample_value("sluice_resource_limit_cpu_cores") == 1.5
    assert registry.get_sample_value("sluice_resource_limit_memory_bytes") == 536870912


def test_a_container_namespace_sees_its_limits_at_the_mount_root(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, "0::/\n", {"cpu.max": "50000 100000", "memory.max": "1048576"})
    assert cpu_limit_cores(root, proc) == 0.5
    assert memory_limit_bytes(root, proc) == 1048576


def test_unlimited_resources_export_no_sample(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, "0::/\n", {"cpu.max": "max 100000", "memory.max": "max"})
    registry = CollectorRegistry()
    ResourceLimitsCollector(registry, root=root, proc_cgroup=proc)
    assert registry.get_sample_value("sluice_resource_limit_cpu_cores") is None
    assert registry.get_sample_value("sluice_resource_limit_memory_bytes") is None


def test_cgroup_v1_and_its_unlimited_sentinels(tmp_path: Path) -> None:
    root, proc = tree(
        tmp_path,
        "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n",
        {
            "cpu/docker/abc/cpu.cfs_quota_us": "200000",
            "cpu/docker/abc/cpu.cfs_period_us": "100000",
            "memory/docker/abc/memory.limit_in_bytes": "2147483648",
        },
    )
    assert cpu_limit_cores(root, proc) == 2.0
    assert memory_limit_bytes(root, proc) == 2147483648
    root, proc = tree(
        tmp_path / "unlimited",
        "4:memory:/\n2:cpu,cpuacct:/\n",
        {
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
            "memory/memory.limit_in_bytes": "9223372036854771712",
        },
    )
    assert cpu_limit_cores(root, proc) is None
    assert memory_limit_bytes(root, proc) is None


def test_no_cgroup_at_all_is_no_limit(tmp_path: Path) -> None:
    assert cpu_limit_cores(tmp_path / "none", tmp_path / "missing") is None
    assert memory_limit_bytes(tmp_path / "none", tmp_path / "missing") is None
