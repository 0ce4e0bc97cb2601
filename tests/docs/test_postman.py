"""The generated Postman collection, run by newman against the live docs suite.

newman is pinned in tests/js/package.json (`make js-deps`); its absence fails the test.
The collection's own scripts assert each response's status and body; here newman's JSON
report is read so that a request that ran no assertion, or a run that stopped early,
fails too.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.docs.blocks import DOCS, ROOT
from tests.e2e.conftest import RunningSuite

POSTMAN = DOCS / "reference" / "postman"
NEWMAN = ROOT / "tests" / "js" / "node_modules" / ".bin" / "newman"


@pytest.mark.e2e
def test_newman_runs_the_collection_against_the_suite(
    docs_suite: RunningSuite, tmp_path: Path
) -> None:
    assert NEWMAN.is_file(), "newman is not installed: run `make js-deps`"
    report = tmp_path / "newman.json"
    result = subprocess.run(
        [
            str(NEWMAN), "run", str(POSTMAN / "sluice.postman_collection.json"),
            "--environment", str(POSTMAN / "sluice.postman_environment.json"),
            "--env-var", f"baseUrl={docs_suite.edge}",
            "--reporters", "cli,json", "--reporter-json-export", str(report),
            "--timeout-request", "30000", "--color", "off",
        ],
        capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    run = json.loads(report.read_text())["run"]
    collection = json.loads((POSTMAN / "sluice.postman_collection.json").read_text())
    requests = sum(len(folder["item"]) for folder in collection["item"])
    assert run["stats"]["requests"] == {"total": requests, "pending": 0, "failed": 0}
    assert run["stats"]["assertions"]["failed"] == 0
    assert run["stats"]["assertions"]["total"] >= 2 * requests
    assert run["failures"] == []
