"""`sluice` builds its whole parser for every command, so building it must stay cheap.

Tests and scripts spawn `sluice` many times, and each part of the suite starts through it:
the parser (launcher/cli.py and the `add_parser` of keys.py, privacy.py, report/cli.py,
rollout/commands.py) imports no settings, gRPC, Sentry or OpenTelemetry module; each
handler imports what its command runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from sluice.launcher import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

# Seconds of CPU between them; none is needed to parse a command line.
_HEAVY = (
    "grpc",
    "sentry_sdk",
    "opentelemetry",
    "pydantic",
    "pydantic_settings",
    "yaml",
    "google.protobuf",
    "cryptography",
    "urllib.request",
    "sluice.core.config",
    "sluice.launcher.settings",
    "sluice.launcher.parts",
    "sluice.launcher.supervisor",
    "sluice.router",
)


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m in _HEAVY or m.startswith(tuple(h + "." for h in _HEAVY))]


def _run(*argv: str) -> tuple[object, list[str], str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # --help and --version print before the probe's own line.
    probe = json.loads(result.stdout.splitlines()[-1])
    return probe["code"], probe["modules"], result.stdout


def test_version_imports_nothing_heavy() -> None:
    code, modules, stdout = _run("--version")
    assert code == 0
    assert stdout.splitlines()[0].startswith("sluice ")
    assert "sluice.launcher.cli" in modules  # the probe did import the CLI
    assert _heavy(modules) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["up", "--help"],
        ["serve", "--help"],
        ["keys", "list", "--help"],
        ["privacy", "erase", "--help"],
        ["report", "sla", "--help"],
        ["rollout", "status", "--help"],
    ],
)
def test_building_the_parser_imports_nothing_heavy(argv: list[str]) -> None:
    code, modules, stdout = _run(*argv)
    assert code == 0
    assert "usage: sluice" in stdout
    assert _heavy(modules) == []


def test_a_command_still_imports_what_it_runs() -> None:
    # The probe sees the heavy modules when a handler does load them, so the empty lists
    # above are not an artefact of the probe (`privacy digest` needs core/erasure.py).
    code, modules, stdout = _run("privacy", "digest", "--user", "alice")
    assert code == 0
    assert stdout.startswith("sha256:")
    assert "sluice.core.erasure" in modules
    assert "grpc" in _heavy(modules)
    assert "sluice.core.config" in _heavy(modules)
