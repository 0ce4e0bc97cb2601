"""What `sluice --version` prints: the installed package's version and, when known, the
git revision it was built from.

The revision comes from build metadata first: the container image sets
``SLUICE_BUILD_REVISION`` from its build argument (deploy/container/Containerfile), since
an image holds no git checkout. Run from a checkout, it is asked of git.
"""

from __future__ import annotations

import functools
import os
import shutil

# git is run with a fixed argv (no shell) to read the checkout's revision.
import subprocess  # nosec B404
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "sluice-gateway"
REVISION_ENV = "SLUICE_BUILD_REVISION"


@functools.cache
def package_version() -> str:
    """The installed distribution's version (pyproject.toml's ``version``)."""
    return metadata.version(DISTRIBUTION)


def git_revision(directory: Path | None = None) -> str | None:
    """The commit of the checkout holding ``directory`` (this package by default), or None
    when it is not in a git checkout or git is not installed."""
    git = shutil.which("git")
    if git is None:
        return None
    where = directory if directory is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(  # noqa: S603  # nosec B603
            [git, "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and revision else None


def build_revision() -> str | None:
    """The revision this build came from: the image's build metadata, else git."""
    return os.environ.get(REVISION_ENV, "").strip() or git_revision()


def version_text() -> str:
    """``sluice <version>``, with `` (revision <sha>)`` when the revision is known."""
    text = f"sluice {package_version()}"
    revision = build_revision()
    return f"{text} (revision {revision})" if revision else text
