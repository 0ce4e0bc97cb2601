"""The image's build inputs: the containers configuration computed from this machine
(scripts/containers_conf.py) and the Containerfile's promises (lock-only install, non-root,
init, labels, read-only root). Building the image itself is `make image`, not a test."""

from __future__ import annotations

import resource
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = (ROOT / "deploy" / "container" / "Containerfile").read_text()


def test_containers_conf_is_computed_from_this_machine(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "containers_conf.py"), "--output", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    conf = tomllib.loads((tmp_path / "containers.conf").read_text())
    storage = tomllib.loads((tmp_path / "storage.conf").read_text())
    limits = dict(item.split("=") for item in conf["containers"]["default_ulimits"])
    nofile_soft, nofile_hard = (int(v) for v in limits["nofile"].split(":"))
    nproc_soft, _ = (int(v) for v in limits["nproc"].split(":"))
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # Never above what podman itself may set (root without CAP_SYS_RESOURCE).
    assert nofile_soft == nofile_hard
    assert hard_nofile == resource.RLIM_INFINITY or nofile_hard <= hard_nofile
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert 0 < nproc_soft <= pid_max
    assert conf["engine"]["runtime"] in {"runc", "crun"}
    hybrid = "cgroup2" in Path("/proc/mounts").read_text() and any(
        line.split()[1] == "/sys/fs/cgroup/unified"
        for line in Path("/proc/mounts").read_text().splitlines()
    )
    if hybrid:  # crun refuses a hybrid cgroup layout
        assert conf["engine"]["runtime"] == "runc"
    assert storage["storage"]["driver"] in {"overlay", "vfs"}


def test_the_image_installs_only_the_lock_by_hash() -> None:
    assert "--require-hashes" in CONTAINERFILE and "requirements/uv.txt" in CONTAINERFILE
    assert "uv sync --frozen --no-dev --no-editable" in CONTAINERFILE
    assert "pip install" not in CONTAINERFILE.replace("-m pip install --quiet --no-cache-dir", "")


def test_the_image_runs_non_root_under_an_init_with_labels() -> None:
    lines = [line.strip() for line in CONTAINERFILE.splitlines()]
    assert "USER 10001:10001" in lines
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "sluice"]' in lines
    assert 'VOLUME ["/run/sluice", "/tmp"]' in lines
    for label in ("version", "revision", "source", "created"):
        assert f"org.opencontainers.image.{label}=" in CONTAINERFILE
    assert "COPY build/sbom.cdx.json" in CONTAINERFILE
    # Both stages start from the one BASE argument.
    assert [line for line in lines if line.startswith("FROM")] == [
        "FROM ${BASE} AS build",
        "FROM ${BASE}",
    ]


def test_the_build_context_holds_what_the_containerfile_copies() -> None:
    ignore = (ROOT / ".containerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    copied = set()
    for line in CONTAINERFILE.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(line.split()[1:-1])
    assert copied <= allowed, copied - allowed
