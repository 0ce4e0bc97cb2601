"""The TypeScript stubs (clients/typescript/src/gen/) are current, compile, and their
example client streams, reads an error's ErrorInfo and cancels against a live suite.

protoc-gen-es, tsc and Connect come from clients/typescript's package-lock.json
(`make js-deps`); their absence fails these tests.
"""

from __future__ import annotations

import filecmp
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.docs.blocks import ROOT
from tests.e2e.conftest import RunningSuite

CLIENT = ROOT / "clients" / "typescript"
TSC = CLIENT / "node_modules" / ".bin" / "tsc"
CANCELLED = re.compile(
    r'^sluice_rpc_requests_total\{code="CANCELLED",method="/sluice.router.v1.RouterService/'
    r'Generate",service="router"\} (\S+)$',
    re.MULTILINE,
)


def _differences(left: Path, right: Path) -> list[str]:
    comparison = filecmp.dircmp(left, right)
    found = [*comparison.left_only, *comparison.right_only, *comparison.diff_files]
    for name, sub in comparison.subdirs.items():
        found += [f"{name}/{d}" for d in _differences(Path(sub.left), Path(sub.right))]
    return found


def _cancelled(suite: RunningSuite) -> float:
    match = CANCELLED.search(httpx.get(suite.metrics_url("router"), timeout=5).text)
    return float(match[1]) if match else 0.0


def test_typescript_stubs_are_up_to_date(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_ts_client.py"), str(fresh)],
        capture_output=True, text=True, cwd=ROOT, timeout=100, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    stale = _differences(CLIENT / "src" / "gen", fresh)
    assert stale == [], f"clients/typescript/src/gen is stale ({stale}): run `make gen`"


@pytest.mark.e2e
def test_typescript_example_client_against_the_suite(docs_suite: RunningSuite) -> None:
    node = shutil.which("node")
    assert node, "node is not installed: run `make js-deps`"
    assert TSC.is_file(), "typescript is not installed in clients/typescript: run `make js-deps`"
    build = subprocess.run(
        [str(TSC), "-p", str(CLIENT / "tsconfig.json")],
        capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    cancelled_before = _cancelled(docs_suite)
    run = subprocess.run(
        [node, str(CLIENT / "build" / "example.js"), docs_suite.edge],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    kinds = result["kinds"]
    assert kinds[0] == "metadata" and kinds[-1] == "complete", kinds
    assert kinds.count("complete") == 1 and "error" not in kinds
    assert result["outputTokens"] == 8 and result["text"].strip()
    # Connect's Code numbers are gRPC's: 16 UNAUTHENTICATED, 1 CANCELLED.
    assert result["error"] == {
        "code": "16",
        "reason": "AUTHORIZATION_ERROR",
        "domain": "sluice.dev",
    }
    assert result["cancel"]["cancelCode"] == "1"
    assert 3 <= result["cancel"]["received"] < 400
    # The router saw the client go away: the cancelled stream is counted as such.
    deadline = time.monotonic() + 5
    while _cancelled(docs_suite) <= cancelled_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _cancelled(docs_suite) > cancelled_before
