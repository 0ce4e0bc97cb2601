"""Prometheus' own tools, promtool and amtool, for the tests that check rules, queries
and the Alertmanager config with them.

They come from Debian's `prometheus` and `prometheus-alertmanager` packages (`make tools`
installs them; CI runs them). Their absence fails a test rather than skipping it:
unchecked alert rules and gate queries are how an outage goes unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess  # nosec B404 - runs the Prometheus tools on the repository's files
from pathlib import Path
from typing import Any

import yaml


def tool(name: str) -> str:
    """The tool's path; a test that needs it fails when it is not installed."""
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make tools` (Debian prometheus packages)"
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command's exit status and output; a tool that hangs fails after a minute."""
    return subprocess.run(  # nosec B603
        args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def assert_promtool_tests_pass(path: Path, document: dict[str, Any]) -> None:
    """Writes a `promtool test rules` file (rule_files, tests: series and expected
    samples) to `path` and runs it: every expectation must hold."""
    path.write_text(yaml.safe_dump(document))
    done = run(tool("promtool"), "test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
