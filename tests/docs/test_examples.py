"""Every shell and Python block of the guides runs against one live suite and succeeds.

The suite is started the way tests/e2e/conftest.py starts it (free ports, real Envoy and
services), with the configuration blocks the guides mark `docs-suite-config` merged in;
each block's `localhost:<default port>` is rewritten to the suite's port. A block marked
`<!-- not-run: reason -->` is listed, with its reason, in the run's summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.core.config import deep_merge
from tests.docs.blocks import ROOT, Block, all_blocks, with_ports
from tests.e2e.conftest import RunningSuite, start_suite

BLOCKS = all_blocks()
RUN = [b for b in BLOCKS if b.kind and not b.not_run]
NOT_RUN = [b for b in BLOCKS if b.kind and b.not_run]
BLOCK_TIMEOUT_S = 60


def _guide_config() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in BLOCKS:
        if block.suite_config:
            merged = deep_merge(merged, yaml.safe_load(block.code))
    return merged


@pytest.fixture(scope="module")
def docs_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    config = _guide_config()
    # start_suite merges one level deep; the guides' sections go in whole on top of it.
    with start_suite(tmp_path_factory.mktemp("docs-suite"), **config) as running:
        yield running


def _run(block: Block, suite: RunningSuite, tmp: Path) -> subprocess.CompletedProcess[str]:
    code = with_ports(block.code, suite.ports)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if block.kind == "python":
        script = tmp / "block.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
        check=False,
    )  # fmt: skip


def test_the_guides_have_runnable_examples() -> None:
    pages = {b.page for b in RUN}
    assert len(RUN) >= 30, [b.id for b in RUN]
    assert {"index.md", "guides/streaming.md", "runbooks.md"} <= pages


def test_every_not_run_block_says_why() -> None:
    assert all(len(b.not_run or "") >= 10 for b in NOT_RUN), [b.id for b in NOT_RUN]


@pytest.mark.e2e
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_docs_block_runs(block: Block, docs_suite: RunningSuite, tmp_path: Path) -> None:
    result = _run(block, docs_suite, tmp_path)
    assert result.returncode == 0, (
        f"{block.id} ({block.kind}) exited {result.returncode}\n--- code\n"
        f"{with_ports(block.code, docs_suite.ports)}\n--- stdout\n{result.stdout[-3000:]}"
        f"\n--- stderr\n{result.stderr[-3000:]}"
    )
