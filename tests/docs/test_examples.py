"""Every shell and Python block of the guides runs against one live suite and succeeds.

The suite is started the way tests/e2e/conftest.py starts it (free ports, real Envoy and
services), with the configuration blocks the guides mark `docs-suite-config` merged in;
each block's `localhost:<default port>` is rewritten to the suite's port. A block marked
`<!-- not-run: reason -->` is listed, with its reason, in the run's summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.blocks import ROOT, Block, all_blocks, with_ports
from tests.e2e.conftest import RunningSuite

BLOCKS = all_blocks()
RUN = [b for b in BLOCKS if b.kind and not b.not_run]
NOT_RUN = [b for b in BLOCKS if b.kind and b.not_run]
BLOCK_TIMEOUT_S = 60


class PythonRunner:
    """One interpreter running tests/docs/runner.py; blocks are sent to it in turn."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("runner.py"))],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def run(self, name: str, code: str) -> tuple[bool, str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"name": name, "code": code}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the Python block runner died running {name}"
        reply = json.loads(line)
        return bool(reply["ok"]), str(reply["output"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def python_runner() -> Iterator[PythonRunner]:
    runner = PythonRunner(_env())
    try:
        yield runner
    finally:
        runner.close()


def test_the_guides_have_runnable_examples() -> None:
    pages = {b.page for b in RUN}
    assert len(RUN) >= 30, [b.id for b in RUN]
    assert {"index.md", "guides/streaming.md", "runbooks.md"} <= pages


def test_every_not_run_block_says_why() -> None:
    assert all(len(b.not_run or "") >= 10 for b in NOT_RUN), [b.id for b in NOT_RUN]


@pytest.mark.e2e
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_docs_block_runs(
    block: Block, docs_suite: RunningSuite, python_runner: PythonRunner
) -> None:
    code = with_ports(block.code, docs_suite.ports)
    if docs_suite.certs is not None:  # the guides' `.run/certs` is `make up`'s run dir
        code = code.replace(".run/certs", str(docs_suite.certs))
    if block.kind == "python":
        ok, output = python_runner.run(block.id, code)
    else:
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", code], cwd=ROOT, env=_env(),
            capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False,
        )  # fmt: skip
        ok, output = result.returncode == 0, result.stdout + result.stderr
    assert ok, f"{block.id} ({block.kind}) failed\n--- code\n{code}\n--- output\n{output[-4000:]}"
