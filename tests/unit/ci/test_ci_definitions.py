"""The four CI definitions: each is valid for its system (actionlint; GitLab's and Azure's
published JSON schemas, as check-jsonschema ships them; a Groovy parser for the
Jenkinsfile), and each runs the pipeline's 10 stages as the same make targets as
scripts/pipeline.py, in order: no stage logic of their own (docs/pipeline.md)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import tree_sitter
import tree_sitter_groovy
import yaml

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
pipeline = load_script("pipeline")
STAGE_TARGETS = [stage.command[2] for stage in pipeline.STAGES]
# Targets a CI job may add before or after a stage's own (the image is rebuilt on a fresh
# runner before staging; the image check rides with the build) and settings it may pass.
HELPERS = {"image", "image-check"}


def make_targets(command: str) -> list[str]:
    """The make targets one shell line runs (settings like REQUIRE_AUDIT=1 dropped)."""
    words = shlex.split(command)
    if words[:1] == ["sudo"]:
        words = words[1:]
    assert words[:1] == ["make"], f"not a make call: {command!r}"
    return [word for word in words[1:] if "=" not in word and not word.startswith("-")]


def stage_target(targets: list[str]) -> str:
    """The stage's own target: the last one that is a stage's; the rest are helpers."""
    assert set(targets) <= set(STAGE_TARGETS) | HELPERS, targets
    return [target for target in targets if target in STAGE_TARGETS][-1]


def check_stage_targets(per_stage: list[list[str]], where: str) -> None:
    got = [stage_target(targets) for targets in per_stage]
    assert got[: len(STAGE_TARGETS)] == STAGE_TARGETS, f"{where}: {got}"


def schema_check(schema: str, transform: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--regex-variant", "python", "--builtin-schema",
         f"vendor.{schema}", "--data-transform", transform, *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


# -- GitHub Actions ------------------------------------------------------------------------


def test_github_workflow_passes_actionlint() -> None:
    done = subprocess.run(
        [str(BIN / "actionlint"), "-no-color", ".github/workflows/pipeline.yml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    text = (ROOT / ".github/workflows/pipeline.yml").read_text()
    broken.write_text(text.replace("needs: smoke-tests", "needs: smoke-test"))
    done = subprocess.run(
        [str(BIN / "actionlint"), "-no-color", str(broken)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "smoke-test" in done.stdout


def test_github_jobs_run_the_stage_targets_in_order() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/pipeline.yml").read_text())
    jobs: dict[str, Any] = workflow["jobs"]
    per_stage = [
        make_targets(step["run"])
        for name, job in jobs.items()
        if name != "publish"
        for step in job["steps"]
        if "run" in step
    ]
    check_stage_targets(per_stage, "GitHub Actions")
    # Each stage waits for the one before (the chain, through the parallel test stages).
    assert jobs["deploy-production"]["needs"] == "smoke-tests"
    assert jobs["health-check"]["needs"] == "deploy-production"
    assert "secrets.REGISTRY" in str(jobs["publish"]) and "refs/heads/main" in jobs["publish"]["if"]


# -- GitLab CI -----------------------------------------------------------------------------


def test_gitlab_ci_matches_gitlab_published_schema(tmp_path: Path) -> None:
    broken = tmp_path / "broken-gitlab-ci.yml"
    broken.write_text(
        (ROOT / ".gitlab-ci.yml").read_text().replace("stage: smoke-tests", "stages: smoke-tests")
    )
    good = schema_check("gitlab-ci", "gitlab-ci", ROOT / ".gitlab-ci.yml")
    assert good.returncode == 0, good.stdout + good.stderr
    bad = schema_check("gitlab-ci", "gitlab-ci", broken)
    assert bad.returncode == 1 and "stages" in bad.stdout


def test_gitlab_jobs_run_the_stage_targets_in_order() -> None:
    config = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    stages: list[str] = config["stages"]
    jobs = {name: job for name, job in config.items() if isinstance(job, dict) and "stage" in job}
    ordered = sorted(
        (job for name, job in jobs.items() if name != "publish"),
        key=lambda job: stages.index(job["stage"]),
    )
    check_stage_targets([make_targets(job["script"][0]) for job in ordered], "GitLab CI")
    assert len(ordered) == 10 and len({job["stage"] for job in ordered}) == 10


# -- Azure Pipelines -----------------------------------------------------------------------


def test_azure_pipeline_matches_azure_published_schema(tmp_path: Path) -> None:
    broken = tmp_path / "broken-azure-pipelines.yml"
    broken.write_text(
        (ROOT / "azure-pipelines.yml").read_text().replace("- job: smoke", "- jobb: smoke")
    )
    done = schema_check("azure-pipelines", "azure-pipelines", ROOT / "azure-pipelines.yml", broken)
    assert done.returncode == 1, done.stdout + done.stderr
    # Only the broken copy fails: the committed file validates.
    failing = set(
        re.findall(r"Schema validation errors were encountered.\n\s*(\S+)::", done.stdout)
    )
    assert failing == {str(broken)}, done.stdout


def test_azure_stages_run_the_stage_targets_in_order() -> None:
    config = yaml.safe_load((ROOT / "azure-pipelines.yml").read_text())
    per_stage = [
        make_targets(job["steps"][0]["script"])
        for stage in config["stages"]
        if stage["stage"] != "publish"
        for job in stage["jobs"]
    ]
    check_stage_targets(per_stage, "Azure Pipelines")


# -- Jenkins -------------------------------------------------------------------------------


def _text(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode()


def _strings(node: tree_sitter.Node) -> list[str]:
    found = [_text(node)[1:-1]] if node.type in ("string", "character_literal") else []
    for child in node.children:
        found += _strings(child)
    return found


def _calls(node: tree_sitter.Node, name: str) -> list[tree_sitter.Node]:
    found = []
    first = node.child_by_field_name("name") or (node.children[0] if node.children else None)
    calls = node.type in ("method_invocation", "juxt_function_call")
    if calls and first is not None and _text(first) == name:
        found.append(node)
    for child in node.children:
        found += _calls(child, name)
    return found


def test_jenkinsfile_parses_as_groovy_and_runs_the_stage_targets_in_order() -> None:
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_groovy.language()))
    tree = parser.parse((ROOT / "Jenkinsfile").read_bytes())
    assert not tree.root_node.has_error
    (pipeline_block,) = _calls(tree.root_node, "pipeline")
    stages = _calls(pipeline_block, "stage")
    names = [_strings(stage)[0] for stage in stages]
    assert names[:10] == [stage.name for stage in pipeline.STAGES]
    per_stage = [
        make_targets(_strings(sh)[0]) for stage in stages[:10] for sh in _calls(stage, "sh")
    ]
    check_stage_targets(per_stage, "Jenkinsfile")
    assert "branch 'main'" in _text(stages[10])


def test_the_groovy_parser_catches_a_broken_jenkinsfile() -> None:
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_groovy.language()))
    text = (
        (ROOT / "Jenkinsfile")
        .read_text()
        .replace("stage('smoke tests') {", "stage('smoke tests') ", 1)
    )
    assert parser.parse(text.encode()).root_node.has_error
