"""The documentation site builds strictly, offline, and every alert's runbook link lands.

`mkdocs build --strict` (mkdocs.yml) fails on a broken link or anchor between pages and
on a page left out of the navigation. The runbook links live in the Prometheus rules,
outside the site, so they are checked here against the ids of the built HTML: exactly
the anchors MkDocs made from the headings.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"
RUNBOOK_KEYS = ("runbook_url", "runbook")


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def _build(site: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(site)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("site")
    result = _build(out)
    assert result.returncode == 0, result.stdout + result.stderr
    yield out


def _page_ids(site: Path, doc: str) -> set[str]:
    """Ids of the built page of docs/<doc> (use_directory_urls: a.md -> a/index.html)."""
    stem = doc.removesuffix(".md")
    html = site / ("index.html" if stem == "index" else f"{stem}/index.html")
    assert html.is_file(), f"{doc} was not built ({html})"
    parser = _Ids()
    parser.feed(html.read_text(encoding="utf-8"))
    return parser.ids


def _alerts() -> Iterator[tuple[str, dict[str, str]]]:
    for rules in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    yield rule["alert"], rule.get("annotations", {})


def _doc_of(link: str) -> tuple[str, str]:
    """`docs/runbooks.md#x`, `runbooks.md#x` or a site URL `.../runbooks/#x` -> (doc, anchor)."""
    parsed = urlparse(link)
    path = parsed.path
    if "docs/" in path:
        path = path.rsplit("docs/", 1)[1]
    path = path.lstrip("/")
    if not path.endswith(".md"):
        path = (path.rstrip("/") or "index") + ".md"
    return path, parsed.fragment


def test_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "reference" / "grpc" / "index.html").is_file()
    assert (site / "search" / "search_index.json").is_file()


def test_a_broken_anchor_fails_the_build(tmp_path: Path) -> None:
    # The strictness the other tests rely on: with this project's mkdocs.yml, a link to
    # a missing anchor fails the build. Two small pages, so the build is quick.
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["nav"] = ["index.md", "runbooks.md"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "runbooks.md").write_text("# Runbooks\n\n## Target down\n")
    (tmp_path / "docs" / "index.md").write_text(
        "# Home\n\n[fine](runbooks.md#target-down) [broken](runbooks.md#no-such-section)\n"
    )
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    result = _build(tmp_path / "site", cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "no-such-section" in output
    assert "target-down" not in output


def test_every_runbook_link_of_an_alert_resolves(site: Path) -> None:
    checked = 0
    for alert, notes in _alerts():
        for key in RUNBOOK_KEYS:
            if key in notes:
                doc, fragment = _doc_of(notes[key])
                assert fragment, f"{alert}: {key} has no #anchor"
                assert fragment in _page_ids(site, doc), f"{alert}: {notes[key]} missing"
                checked += 1
    assert checked >= 1


def test_every_alert_has_a_runbook_section(site: Path) -> None:
    # An alert without a runbook link is covered by a section named after it.
    ids = _page_ids(site, "runbooks.md")
    uncovered = [
        alert
        for alert, notes in _alerts()
        if not any(k in notes for k in RUNBOOK_KEYS) and alert.lower() not in ids
    ]
    assert uncovered == []


def test_runbook_sections_have_every_part() -> None:
    text = (ROOT / "docs" / "runbooks.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    assert len(sections) >= 10
    for section in sections:
        title = section.splitlines()[0]
        if title.startswith(("How to", "Conventions")):
            continue
        for part in ("Symptoms", "Diagnosis", "Resolution", "Prevention", "Escalation"):
            assert f"**{part}**" in section, f"runbook '{title}' lacks {part}"
