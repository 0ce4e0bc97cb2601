"""The committed generated code and Envoy config match what their sources produce."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.core.grpcx.certs import write_suite_certs
from sluice.launcher.envoy import render_yaml
from sluice.launcher.settings import load_suite, with_certs_dir

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _generate(script: str, output: Path) -> Path:
    """Run one of scripts/ that regenerates a committed file, writing to `output`."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), str(output)],
        check=True,
        capture_output=True,
    )
    return output


def _differences(left: Path, right: Path) -> list[str]:
    comparison = filecmp.dircmp(left, right)
    found = [f"only in gen/: {n}" for n in comparison.left_only]
    found += [f"missing from gen/: {n}" for n in comparison.right_only]
    found += [f"stale: {n}" for n in comparison.diff_files]
    for name, sub in comparison.subdirs.items():
        found += [f"{name}/{d}" for d in _differences(Path(sub.left), Path(sub.right))]
    return found


def test_gen_is_up_to_date_with_protos(tmp_path: Path) -> None:
    fresh = _generate("gen_protos.py", tmp_path / "gen")
    assert _differences(ROOT / "gen", fresh) == [], "gen/ is stale: run `make gen`"


def test_error_docs_are_up_to_date_with_the_error_table(tmp_path: Path) -> None:
    fresh = _generate("gen_error_docs.py", tmp_path / "errors.md")
    committed = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert "`QUOTA_EXCEEDED` | `RESOURCE_EXHAUSTED` | 429" in committed
    assert committed == fresh.read_text(encoding="utf-8"), "docs/errors.md is stale: run `make gen`"


def test_buf_lint_is_clean() -> None:
    result = subprocess.run(
        [
            str(BIN / "buf"),
            "lint",
            str(ROOT / "gen" / "sluice.binpb"),
            "--path",
            "sluice",
            "--config",
            str(ROOT / "buf.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_envoy_config_matches_the_renderer(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("SLUICE_"):
            monkeypatch.delenv(name)
    # As `make envoy-config` renders it: mtls on (the default), certificates in /etc/sluice.
    suite = with_certs_dir(load_suite(None), Path("/etc/sluice/certs"))
    rendered = render_yaml(suite, Path("/etc/sluice/sluice.binpb"))
    committed = (ROOT / "deploy" / "envoy" / "envoy.yaml").read_text()
    assert committed == rendered, "deploy/envoy/envoy.yaml is stale: run `make envoy-config`"


def test_rendered_envoy_config_is_accepted_by_envoy(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    from sluice.launcher.envoy import descriptor_path

    write_suite_certs(tmp_path / "certs")
    suite = with_certs_dir(load_suite(None), tmp_path / "certs")
    config.write_text(render_yaml(suite, descriptor_path()))
    result = subprocess.run(
        [str(BIN / "envoy"), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
