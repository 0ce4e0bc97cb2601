"""The recorded quick-start walkthrough (docs/training/walkthrough.cast): the recorder
(scripts/record_walkthrough.py, asciinema) runs against a real suite and shows every
answer, and the committed recording shows the walkthrough script's current commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.blocks import ROOT

pytestmark = pytest.mark.e2e

COMMITTED = ROOT / "docs" / "training" / "walkthrough.cast"
PORT = re.compile(r"127\.0\.0\.1:\d+")


def _read(cast: Path) -> tuple[dict[str, object], str]:
    """The asciicast v2 header and everything the terminal printed."""
    lines = cast.read_text().splitlines()
    header = json.loads(lines[0])
    events = [json.loads(line) for line in lines[1:]]
    times = [event[0] for event in events]
    assert times == sorted(times), "event times must not go backwards"
    assert {event[1] for event in events} == {"o"}
    return header, "".join(event[2] for event in events)


def _commands(output: str) -> list[str]:
    return [PORT.sub("EDGE", line) for line in output.splitlines() if line.startswith("$ ")]


def test_the_walkthrough_records_against_a_live_suite(tmp_path: Path) -> None:
    cast = tmp_path / "walkthrough.cast"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "record_walkthrough.py"), str(cast)],
        capture_output=True, text=True, timeout=240, check=False, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    header, output = _read(cast)
    assert header["version"] == 2 and header["width"] == 100
    assert '"object": "chat.completion"' in output
    assert '"finish_reason": "length"' in output
    assert output.count("chat.completion.chunk") >= 3 and "data: [DONE]" in output
    assert '"type": "authentication_error"' in output and "HTTP 401" in output
    assert "GET /docs -> 302" in output and "/ui/docs.html" in output
    assert "HTTP 5" not in output and "Traceback" not in output
    # The committed recording is of this script: same commands, in the same order.
    _, committed = _read(COMMITTED)
    assert _commands(committed) == _commands(output), (
        "docs/training/walkthrough.cast is stale: run `python scripts/record_walkthrough.py`"
    )
