"""scripts/pipeline.py: stages run in order, each timed; the first failure stops the run
and is named; nothing after it runs (a failed smoke test never reaches production).

The stage commands here are real child processes that record that they ran; the real
stages (make targets) take far too long for `make test` (docs/pipeline.md has a full run).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "pipeline.py"


pipeline = load_script("pipeline")


def run_entry_point(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`python scripts/pipeline.py ARGS` with only the given PIPELINE_* settings in its
    environment (none inherited from the shell that runs the tests)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIPELINE_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env | settings,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fake_stages(marks: Path, failing: str | None = None) -> list[object]:
    """The 10 real stage keys and names, each command a child that touches a mark file
    (and exits 3 for the failing one)."""
    stages = []
    for stage in pipeline.STAGES:
        code = 3 if stage.key == failing else 0
        mark = str(marks / stage.key)
        script = f"import pathlib, sys; pathlib.Path({mark!r}).touch(); sys.exit({code})"
        stages.append(pipeline.Stage(stage.key, stage.name, (sys.executable, "-c", script)))
    return stages


def test_the_seed_ten_stages_in_order_each_a_make_target() -> None:
    assert [stage.name for stage in pipeline.STAGES] == [
        "commit", "build", "unit tests", "integration tests", "security scan",
        "container build", "deploy to staging", "smoke tests", "deploy to production",
        "health check",
    ]  # fmt: skip
    for stage in pipeline.STAGES:
        assert stage.command[:2] == ("make", "--no-print-directory")
        targets = stage.command[2:]
        makefile = (ROOT / "Makefile").read_text()
        for target in targets:
            assert f"\n{target}:" in makefile, f"{stage.name}: no make target {target}"


def test_all_stages_pass_in_order_each_named_and_timed(tmp_path: Path) -> None:
    out = io.StringIO()
    result = pipeline.run_pipeline(fake_stages(tmp_path), out=out)
    assert result.exit_code == 0 and result.failed is None
    assert list(result.passed) == [stage.name for stage in pipeline.STAGES]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(s.key for s in pipeline.STAGES)
    text = out.getvalue()
    positions = [text.index(f": {stage.name}: ok in ") for stage in pipeline.STAGES]
    assert positions == sorted(positions)
    assert "pipeline passed: 10 stages in" in text


def test_a_failed_smoke_stage_stops_before_production(tmp_path: Path) -> None:
    out = io.StringIO()
    result = pipeline.run_pipeline(fake_stages(tmp_path, failing="smoke"), out=out)
    assert result.failed == "smoke tests"
    assert result.exit_code == 3
    ran = {p.name for p in tmp_path.iterdir()}
    assert "smoke" in ran
    assert not ran & {"production", "health"}, ran
    text = out.getvalue()
    assert "smoke tests: FAILED (exit 3)" in text
    assert "pipeline FAILED at stage 'smoke tests'" in text
    assert "not run: deploy to production, health check" in text
    assert "deploy to production: ok" not in text


def test_pipeline_fail_stage_fails_that_stage_without_running_it(tmp_path: Path) -> None:
    out = io.StringIO()
    result = pipeline.run_pipeline(fake_stages(tmp_path), fail_stage="smoke", out=out)
    assert result.failed == "smoke tests" and result.exit_code == 1
    ran = {p.name for p in tmp_path.iterdir()}
    assert ran == {"commit", "build", "unit", "integration", "security", "container", "staging"}
    assert "failing on purpose (PIPELINE_FAIL_STAGE=smoke)" in out.getvalue()


def test_an_unknown_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pipeline.UnknownStageError, match="smok"):
        pipeline.run_pipeline(fake_stages(tmp_path), fail_stage="smok")
    assert not list(tmp_path.iterdir())


def test_make_pipeline_entry_point_stops_at_smoke_and_never_deploys() -> None:
    # The real runner and stage list from the command line: only smoke and the two
    # production stages selected, smoke failed on purpose, so no make target runs.
    done = run_entry_point(PIPELINE_STAGES="smoke,production,health", PIPELINE_FAIL_STAGE="smoke")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "==> stage 1/3: smoke tests" in done.stdout
    assert "pipeline FAILED at stage 'smoke tests'" in done.stdout
    assert "not run: deploy to production, health check" in done.stdout
    assert "make --no-print-directory deploy-production" not in done.stdout


def test_unknown_stage_in_the_environment_exits_2() -> None:
    done = run_entry_point(PIPELINE_STAGES="smoke,prod")
    assert done.returncode == 2
    assert "no stage prod" in done.stderr


def test_the_run_ends_with_every_stage_timed_and_the_total(tmp_path: Path) -> None:
    ticks = iter(float(n) for n in range(100))
    out = io.StringIO()
    result = pipeline.run_pipeline(
        fake_stages(tmp_path, failing="smoke"), out=out, clock=lambda: next(ticks)
    )
    # Each stage reads the clock twice (start, end) and the total once more.
    assert [name for name, _ in result.timings] == [s.name for s in pipeline.STAGES][:8]
    assert all(seconds == 1.0 for _, seconds in result.timings)
    table = out.getvalue().split("stage timings:\n", 1)[1].splitlines()
    assert table[0].split() == ["commit", "1.0", "s", "ok"]
    assert table[7].split() == ["smoke", "tests", "1.0", "s", "FAILED"]
    assert table[8].split() == ["deploy", "to", "production", "-", "not", "run"]
    assert table[9].split() == ["health", "check", "-", "not", "run"]
    assert table[10].split()[0] == "total"
    # A run that reached no production stage says nothing about stopping production.
    assert "make production-down" not in out.getvalue()


def test_a_run_that_reaches_production_says_how_to_stop_it(tmp_path: Path) -> None:
    out = io.StringIO()
    result = pipeline.run_pipeline(fake_stages(tmp_path), out=out)
    assert result.exit_code == 0
    assert "`make production-down` stops it" in out.getvalue()


def test_from_starts_at_that_stage_and_names_the_stages_left_out() -> None:
    stages = pipeline.select(pipeline.STAGES, None, "container")
    assert [stage.key for stage in stages] == [
        "container", "staging", "smoke", "production", "health",
    ]  # fmt: skip
    # With PIPELINE_STAGES too: only the selected ones from that stage on.
    both = pipeline.select(pipeline.STAGES, "unit,smoke,health", "smoke")
    assert [stage.key for stage in both] == ["smoke", "health"]
    with pytest.raises(pipeline.UnknownStageError, match="no stage smok"):
        pipeline.select(pipeline.STAGES, None, "smok")


def test_from_on_the_command_line_stops_at_smoke_and_never_deploys() -> None:
    done = run_entry_point("--from", "smoke", PIPELINE_FAIL_STAGE="smoke")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "==> stage 1/3: smoke tests" in done.stdout
    assert "pipeline FAILED at stage 'smoke tests'" in done.stdout
    assert "deploy-production" not in done.stdout
    assert "not selected (PIPELINE_STAGES/PIPELINE_FROM): commit, build," in done.stdout


@pytest.mark.parametrize("target", ["test", "test-unit", "test-integration"])
def test_every_test_target_installs_the_system_tools_its_tests_run(target: str) -> None:
    # A fresh machine's `make pipeline` failed its unit stage: promtool and amtool were
    # installed only by `make test`, which the pipeline does not run.
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(rf"^{re.escape(target)}:(.*)$", makefile, re.MULTILINE)
    assert rule is not None, target
    assert "tools" in rule.group(1).split(), f"{target}: {rule.group(0)}"
