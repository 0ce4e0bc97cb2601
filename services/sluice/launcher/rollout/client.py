"""The client side of the control endpoint (the endpoint and its API: control.py): what
`sluice rollout …` (commands.py) calls. Apart from control.py, which imports the rollout
controller and the suite's settings, so the command line loads neither."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def url_path(run_dir: Path) -> Path:
    """Where the endpoint's URL is written."""
    return run_dir / "rollout.url"


def token_path(run_dir: Path) -> Path:
    """Where its token is written (0600)."""
    return run_dir / "rollout.token"


class ControlError(Exception):
    """The endpoint refused a request or could not be reached."""


def call(
    run_dir: Path, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One request to a running suite's control endpoint."""
    try:
        base = url_path(run_dir).read_text(encoding="utf-8").strip()
        token = token_path(run_dir).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ControlError(
            f"no running suite in {run_dir} ({err.strerror}: {err.filename}); "
            "start one with `sluice up` or pass --run-dir"
        ) from err
    if not base.startswith("http://127.0.0.1:"):
        raise ControlError(f"{url_path(run_dir)} does not name a loopback endpoint")
    request = urllib.request.Request(  # noqa: S310 - loopback, checked above
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  # nosec B310
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read())["error"]
            message = f"{detail['reason']}: {detail['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {err.code}"
        raise ControlError(message) from err
    except OSError as err:
        raise ControlError(f"cannot reach the suite at {base}: {err}") from err
