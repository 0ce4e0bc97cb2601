"""The docs tests' shared suite, and the report of which docs blocks were not run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from sluice.core.config import deep_merge
from tests.docs.blocks import all_blocks
from tests.e2e.conftest import RunningSuite, start_suite


def guide_config() -> dict[str, Any]:
    """The configuration blocks the guides mark `docs-suite-config`, merged."""
    merged: dict[str, Any] = {}
    for block in all_blocks():
        if block.suite_config:
            merged = deep_merge(merged, yaml.safe_load(block.code))
    return merged


@pytest.fixture(scope="package")
def docs_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    """One suite for every docs test that needs one (the examples, the Postman run),
    started with the guides' configuration blocks on top of the e2e defaults."""
    with start_suite(tmp_path_factory.mktemp("docs-suite"), **guide_config()) as running:
        yield running


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    runnable = [b for b in all_blocks() if b.kind]
    skipped = [b for b in runnable if b.not_run]
    if not runnable:
        return
    terminalreporter.write_sep("-", "docs code blocks")
    terminalreporter.write_line(
        f"{len(runnable) - len(skipped)} shell/python blocks run, {len(skipped)} marked not-run"
    )
    for block in skipped:
        terminalreporter.write_line(f"  not-run {block.id}: {block.not_run}")
