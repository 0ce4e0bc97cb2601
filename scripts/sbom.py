"""Writes a CycloneDX JSON bill of materials of Sluice's locked runtime set.

The runtime set is what `uv sync --no-dev` installs: uv.lock exported without the dev
group, with its hashes, then described by cyclonedx-py (the CycloneDX project's own tool).
Usage: python scripts/sbom.py --uv .uv/bin/uv --output build/sbom.cdx.json
"""

from __future__ import annotations

import argparse
import os
import subprocess  # nosec B404 - runs uv, pip-audit and cyclonedx-py
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def export_runtime(uv: str, target: Path) -> None:
    """The locked runtime requirements, pinned and hashed, into `target`."""
    subprocess.run(  # noqa: S603  # nosec B603 - fixed argv, no shell
        [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--quiet",
         "--format", "requirements-txt", "--output-file", str(target)],
        cwd=ROOT, check=True,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uv", default=str(ROOT / ".uv" / "bin" / "uv"))
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "sbom.cdx.json")
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "runtime.txt"
        export_runtime(args.uv, requirements)
        subprocess.run(  # noqa: S603  # nosec B603 - fixed argv, no shell
            [str(Path(sys.executable).parent / "cyclonedx-py"), "requirements",
             "--pyproject", str(ROOT / "pyproject.toml"), "--mc-type", "application",
             "--output-reproducible", "--validate", "--of", "JSON",
             "--output-file", str(args.output), str(requirements)],
            check=True,
            # cyclonedx warns that the root's dependency graph is not given: the export is
            # flat by design (the lock, not a tree), so the warning says nothing new.
            env={**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"},
        )  # fmt: skip
    print(f"SBOM of the locked runtime set: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
