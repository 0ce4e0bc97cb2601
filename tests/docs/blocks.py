"""Code blocks of the docs pages: found, classified and made runnable against a test suite.

A fenced block tagged `sh`, `bash`, `shell` or `python` runs; one preceded by the HTML
comment `<!-- not-run: reason -->` does not, and is counted with its reason. A `yaml`
block preceded by `<!-- docs-suite-config -->` is configuration the test suite starts
with, so the configuration a guide shows is the one its examples run against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# The pages whose examples must run: the guides and the operator's pages.
PAGES = (
    "index.md",
    "guides/authentication.md",
    "guides/rate-limits.md",
    "guides/streaming.md",
    "guides/openai-migration.md",
    "operations.md",
    "runbooks.md",
    "faq.md",
    "training/index.md",
    "training/developer-guide.md",
)
RUNNABLE = {"sh": "shell", "bash": "shell", "shell": "shell", "python": "python", "py": "python"}
# The suite's default ports as the docs show them -> the names of tests/e2e/conftest.py.
DEFAULT_PORTS = {
    8080: "envoy",
    9901: "envoy_admin",
    50051: "router",
    9101: "router_metrics",
    8090: "router_http",
    50052: "limiter",
    9102: "limiter_metrics",
    50053: "provider",
    9103: "provider_metrics",
    4317: "telemetry",
    9104: "telemetry_metrics",
}
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*(?P<kind>not-run|docs-suite-config)\s*:?\s*(?P<reason>.*?)\s*-->")
_ADDRESS = re.compile(r"\b(localhost|127\.0\.0\.1):(\d+)\b")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    line: int
    lang: str
    code: str
    not_run: str | None
    suite_config: bool

    @property
    def kind(self) -> str | None:
        """`shell` or `python` when the block is code the test runs, else None."""
        return RUNNABLE.get(self.lang)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """Every fenced block of docs/<page>, with the marker of the line before it."""
    found: list[Block] = []
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    index = 0
    previous = ""
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            if lines[index].strip():
                previous = lines[index]
            index += 1
            continue
        start = index
        indent = len(fence["indent"])
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][indent:])
            index += 1
        mark = _MARK.match(previous)
        found.append(
            Block(
                page=page,
                line=start + 1,
                lang=fence["lang"],
                code="\n".join(body) + "\n",
                not_run=mark["reason"] if mark and mark["kind"] == "not-run" else None,
                suite_config=bool(mark and mark["kind"] == "docs-suite-config"),
            )
        )
        previous = ""
        index += 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def with_ports(code: str, ports: dict[str, int]) -> str:
    """The block's default-port addresses pointed at the test suite's ports."""

    def replace(match: re.Match[str]) -> str:
        name = DEFAULT_PORTS.get(int(match[2]))
        return f"{match[1]}:{ports[name]}" if name else match[0]

    return _ADDRESS.sub(replace, code)
