"""Reports which docs blocks were not run, and why, at the end of every run."""

from __future__ import annotations

import pytest

from tests.docs.blocks import all_blocks


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    runnable = [b for b in all_blocks() if b.kind]
    skipped = [b for b in runnable if b.not_run]
    terminalreporter.write_sep("-", "docs code blocks")
    terminalreporter.write_line(
        f"{len(runnable) - len(skipped)} shell/python blocks run, {len(skipped)} marked not-run"
    )
    for block in skipped:
        terminalreporter.write_line(f"  not-run {block.id}: {block.not_run}")
