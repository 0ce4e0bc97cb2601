"""Runs pip-audit over every package uv.lock names, and fails when it checked nothing.

pip-audit asks a vulnerability service (PyPI's JSON API by default) about each package.
Where that service cannot be reached, pip-audit skips each package as "not found" and
still prints "No known vulnerabilities found" with exit 0. This wrapper treats any skipped
package as not proven (exit 2) and says so in one line, so an audit that checked nothing
never passes; a vulnerable package found among those checked fails (exit 1) all the same.
`make scan` turns exit 2 into a warning unless REQUIRE_AUDIT is set. Usage:
python scripts/audit.py --uv .uv/bin/uv
"""

from __future__ import annotations

import argparse
import json
import subprocess  # nosec B404 - runs uv, pip-audit and cyclonedx-py
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def audit(uv: str) -> tuple[list[dict[str, object]], str]:
    """pip-audit's JSON dependency list for the whole locked set, and its stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "locked.txt"
        subprocess.run(  # noqa: S603  # nosec B603 - fixed argv, no shell
            [uv, "export", "--frozen", "--no-emit-project", "--quiet",
             "--format", "requirements-txt", "--output-file", str(requirements)],
            cwd=ROOT, check=True,
        )  # fmt: skip
        done = subprocess.run(  # noqa: S603  # nosec B603 - fixed argv, no shell
            [str(Path(sys.executable).parent / "pip-audit"), "--requirement", str(requirements),
             "--require-hashes", "--disable-pip", "--progress-spinner", "off",
             "--format", "json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return [], done.stderr
    dependencies: list[dict[str, object]] = report.get("dependencies", [])
    return dependencies, done.stderr


def verdict(dependencies: list[dict[str, object]], stderr: str) -> tuple[int, list[str]]:
    """The exit code and lines to print: 1 when a checked package is vulnerable (even if
    others could not be checked), 2 when the service was not reached for some package (or
    pip-audit gave no result), 0 when every package was checked and none is vulnerable."""
    if not dependencies:
        return 2, [f"pip-audit: no result (the audit did not run): {stderr.strip()[-500:]}"]
    lines = []
    vulnerable = [d for d in dependencies if d.get("vulns")]
    for dep in vulnerable:
        ids = ", ".join(str(v.get("id")) for v in dep["vulns"])  # type: ignore[attr-defined]
        lines.append(f"{dep['name']} {dep['version']}: {ids}")
    skipped = [d for d in dependencies if d.get("skip_reason")]
    if skipped:
        lines.append(
            f"pip-audit could not check {len(skipped)} of {len(dependencies)} locked packages: "
            "its vulnerability service (PyPI's JSON API) cannot be reached from here, "
            "so nothing is proven about them."
        )
    checked = len(dependencies) - len(skipped)
    lines.append(f"pip-audit checked {checked} locked packages: {len(vulnerable)} vulnerable")
    # A vulnerability found is a failure whatever else could not be checked.
    if vulnerable:
        return 1, lines
    return (2 if skipped else 0), lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uv", default=str(ROOT / ".uv" / "bin" / "uv"))
    args = parser.parse_args()
    code, lines = verdict(*audit(args.uv))
    for line in lines:
        print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
