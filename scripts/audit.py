"""Runs pip-audit over every package uv.lock names, and fails when it checked nothing.

pip-audit asks a vulnerability service (PyPI's JSON API by default) about each package.
Where that service cannot be reached, pip-audit skips each package as "not found" and
still prints "No known vulnerabilities found" with exit 0. This wrapper treats any skipped
package as a failure and says so in one line, so an audit that checked nothing never
passes. Usage: python scripts/audit.py --uv .uv/bin/uv
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uv", default=str(ROOT / ".uv" / "bin" / "uv"))
    args = parser.parse_args()
    dependencies, stderr = audit(args.uv)
    if not dependencies:
        print("pip-audit: no result (the audit did not run):", stderr.strip()[-500:])
        return 2
    skipped = [d for d in dependencies if d.get("skip_reason")]
    if skipped:
        print(
            f"pip-audit could not check {len(skipped)} of {len(dependencies)} locked packages: "
            "its vulnerability service (PyPI's JSON API) cannot be reached from here, "
            "so nothing is proven about them."
        )
        return 2
    vulnerable = [d for d in dependencies if d.get("vulns")]
    for dep in vulnerable:
        ids = ", ".join(str(v.get("id")) for v in dep["vulns"])  # type: ignore[attr-defined]
        print(f"{dep['name']} {dep['version']}: {ids}")
    print(f"pip-audit checked {len(dependencies)} locked packages: {len(vulnerable)} vulnerable")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
