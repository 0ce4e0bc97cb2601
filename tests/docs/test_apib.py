"""The API Blueprint export (docs/reference/sluice.apib) parses cleanly with drafter.js.

drafter.js (the reference API Blueprint parser, pinned in tests/js/package.json; `make
js-deps`) reports problems as warning annotations; the export must have none, and must
hold one resource per path of the edge's OpenAPI document with a success and an error
example per action.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sluice.launcher.openapi import render_openapi
from tests.docs.blocks import DOCS, ROOT

JS = ROOT / "tests" / "js"
APIB = DOCS / "reference" / "sluice.apib"


def _parse(path: Path) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is not installed: run `make js-deps`"
    assert (JS / "node_modules" / "drafter.js").is_dir(), "drafter.js missing: run `make js-deps`"
    result = subprocess.run(
        [node, str(JS / "apib_parse.cjs"), str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_the_export_parses_without_warnings() -> None:
    parsed = _parse(APIB)
    assert parsed["annotations"] == []
    paths = render_openapi(ROOT / "gen" / "sluice.binpb")["paths"]
    assert [r["href"] for r in parsed["resources"]] == list(paths)
    for resource in parsed["resources"]:
        assert resource["actions"] == [2] * len(paths[resource["href"]]), resource


def test_a_broken_blueprint_is_reported(tmp_path: Path) -> None:
    # The check above can fail: a resource whose URI has a space is a parser warning.
    broken = tmp_path / "broken.apib"
    broken.write_text(APIB.read_text().replace("[/v1/complete]", "[/v1/com plete]", 1))
    assert _parse(broken)["annotations"] != []
