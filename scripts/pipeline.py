"""The delivery pipeline's 10 stages, run in order as make targets (`make pipeline`).

Each stage is one or more make targets, the same ones every CI definition calls
(.github/workflows/pipeline.yml, .gitlab-ci.yml, Jenkinsfile, azure-pipelines.yml), so
the logic lives in the Makefile once. This runner prints each stage's name and duration
and stops at the first failure, naming the stage: nothing after a failed stage runs (a
failed smoke test never reaches production). It ends with a table of every stage's time
and the total. docs/pipeline.md describes the stages.

PIPELINE_FAIL_STAGE=<key> (e.g. smoke) makes that stage fail on purpose instead of
running it, to show what a failure does; PIPELINE_STAGES=a,b runs only those stages;
PIPELINE_FROM=<key> (or --from KEY) starts at that stage, a re-run aid after a fix (a
release is only ever a full run: the table at the end names the stages left out).
"""

from __future__ import annotations

import argparse
import os
import subprocess  # nosec B404 - runs make with fixed argument lists
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stage:
    """One stage: a short key (for PIPELINE_FAIL_STAGE and CI job names), its name, and
    the command that runs it."""

    key: str
    name: str
    command: tuple[str, ...]


def make(*targets: str) -> tuple[str, ...]:
    return ("make", "--no-print-directory", *targets)


STAGES: tuple[Stage, ...] = (
    Stage("commit", "commit", make("lint")),
    Stage("build", "build", make("build")),
    Stage("unit", "unit tests", make("test-unit")),
    Stage("integration", "integration tests", make("test-integration")),
    Stage("security", "security scan", make("scan")),
    Stage("container", "container build", make("image")),
    Stage("staging", "deploy to staging", make("deploy-staging")),
    Stage("smoke", "smoke tests", make("smoke")),
    Stage("production", "deploy to production", make("deploy-production")),
    Stage("health", "health check", make("health-check")),
)
"""The seed's 10 stages, in order."""

PRODUCTION_KEYS = frozenset({"production", "health"})
"""The stages after which production runs on (it is long-lived: `make production-down`)."""


class UnknownStageError(ValueError):
    """A stage key in PIPELINE_FAIL_STAGE, PIPELINE_STAGES or PIPELINE_FROM that no stage has."""


@dataclass(frozen=True)
class Result:
    """How a run ended: the stages that passed, the one that failed (if any), and each
    stage that ran with its seconds, in order."""

    passed: tuple[str, ...]
    failed: str | None
    exit_code: int
    timings: tuple[tuple[str, float], ...] = ()


def _run(command: Sequence[str]) -> int:
    return subprocess.run(command, cwd=ROOT, check=False).returncode  # noqa: S603  # nosec B603


def _known(stages: Sequence[Stage], keys: Sequence[str], what: str) -> None:
    known = [stage.key for stage in stages]
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise UnknownStageError(
            f"{what}: no stage {', '.join(unknown)}; stages: {', '.join(known)}"
        )


def select(stages: Sequence[Stage], only: str | None, start: str | None = None) -> list[Stage]:
    """The stages named in `only` (comma-separated keys), in pipeline order, all if None;
    then only those from the stage `start` on."""
    chosen = list(stages)
    if only:
        wanted = [key.strip() for key in only.split(",") if key.strip()]
        _known(stages, wanted, "PIPELINE_STAGES")
        chosen = [stage for stage in chosen if stage.key in wanted]
    if start:
        _known(stages, [start], "PIPELINE_FROM (--from)")
        first = [stage.key for stage in stages].index(start)
        later = {stage.key for stage in stages[first:]}
        chosen = [stage for stage in chosen if stage.key in later]
    return chosen


def summary(stages: Sequence[Stage], result: Result, total: float) -> str:
    """The end-of-run table: each selected stage with its time and outcome, the total,
    and the stages PIPELINE_STAGES or PIPELINE_FROM left out."""
    took = dict(result.timings)
    lines = ["stage timings:"]
    for stage in stages:
        if stage.name not in took:
            outcome, seconds = "not run", "-"
        else:
            outcome = "FAILED" if stage.name == result.failed else "ok"
            seconds = f"{took[stage.name]:.1f} s"
        lines.append(f"  {stage.name:<22} {seconds:>9}  {outcome}")
    lines.append(f"  {'total':<22} {total:>7.1f} s")
    selected = {stage.key for stage in stages}
    left_out = [stage.name for stage in STAGES if stage.key not in selected]
    if left_out:
        lines.append(f"  not selected (PIPELINE_STAGES/PIPELINE_FROM): {', '.join(left_out)}")
    return "\n".join(lines)


def run_pipeline(
    stages: Sequence[Stage],
    *,
    run: Callable[[Sequence[str]], int] = _run,
    fail_stage: str | None = None,
    out: TextIO = sys.stdout,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """Run the stages in order; stop at the first that fails (exit code of its command);
    end with every stage's time."""
    if fail_stage and fail_stage not in {stage.key for stage in stages}:
        raise UnknownStageError(f"PIPELINE_FAIL_STAGE={fail_stage}: no such stage")
    passed: list[str] = []
    timings: list[tuple[str, float]] = []
    started = clock()
    result: Result | None = None
    for number, stage in enumerate(stages, start=1):
        print(f"==> stage {number}/{len(stages)}: {stage.name}", file=out, flush=True)
        stage_started = clock()
        if stage.key == fail_stage:
            print(f"    failing on purpose (PIPELINE_FAIL_STAGE={fail_stage})", file=out)
            code = 1
        else:
            print(f"    $ {' '.join(stage.command)}", file=out, flush=True)
            code = run(stage.command)
        took = clock() - stage_started
        timings.append((stage.name, took))
        if code != 0:
            print(
                f"<== stage {number}/{len(stages)}: {stage.name}: FAILED (exit {code}) "
                f"after {took:.1f} s",
                file=out,
            )
            print(
                f"pipeline FAILED at stage '{stage.name}' after {clock() - started:.1f} s; "
                f"not run: {', '.join(s.name for s in stages[number:]) or 'nothing'}",
                file=out,
                flush=True,
            )
            result = Result(tuple(passed), stage.name, code, tuple(timings))
            break
        passed.append(stage.name)
        print(f"<== stage {number}/{len(stages)}: {stage.name}: ok in {took:.1f} s", file=out)
    total = clock() - started
    if result is None:
        print(f"pipeline passed: {len(stages)} stages in {total:.1f} s", file=out)
        result = Result(tuple(passed), None, 0, tuple(timings))
    print(summary(stages, result, total), file=out)
    reached = {stage.key for stage in stages if stage.name in dict(timings)}
    if reached & PRODUCTION_KEYS:
        # Production is long-lived by design: the next run rolls out to it (a canary).
        print(
            "production keeps running (the next `make pipeline` canary-rolls out to it); "
            "`make production-down` stops it",
            file=out,
        )
    out.flush()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the stages and exit")
    parser.add_argument(
        "--from",
        dest="start",
        metavar="KEY",
        default=os.environ.get("PIPELINE_FROM") or None,
        help="start at this stage (a re-run aid; also PIPELINE_FROM)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for stage in STAGES:
            print(f"{stage.key:<12} {stage.name:<22} {' '.join(stage.command)}")
        return 0
    try:
        stages = select(STAGES, os.environ.get("PIPELINE_STAGES"), args.start)
        result = run_pipeline(stages, fail_stage=os.environ.get("PIPELINE_FAIL_STAGE") or None)
    except UnknownStageError as err:
        print(f"pipeline: {err}", file=sys.stderr)
        return 2
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
