"""Envoy's hot-restart identity for one suite: its base id, restart epoch and segment.

Envoy keeps hot-restart state in a POSIX shared-memory segment named after its base id
(`/dev/shm/envoy_shared_memory_<base id * 10>`) and talks to its parent over abstract
sockets derived from the same id. A fixed base id collides between suites and between
users (a segment another user left behind cannot be replaced: `File exists`), so each
suite's first Envoy asks for a free one (`--use-dynamic-base-id`) and writes it to a
file in the suite's run directory; every later Envoy of the suite reads it back.

- A hot restart (the old Envoy still running) passes `--restart-epoch` one higher and
  the same base id: the new Envoy takes over the listening sockets, so no connection
  is refused, and the old one drains and exits.
- After the old Envoy died (a crash, kill -9) there is no parent to hand over from: a
  higher epoch would wait for it forever, so the restart is epoch 0 with the same base
  id, which replaces the dead one's segment (ours, so that is allowed).
- Envoy leaves its segment behind when it exits; a clean stop removes it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

# Where Linux keeps POSIX shared memory (not a temporary directory of ours).
SHM_DIR = Path("/dev/shm")  # noqa: S108  # nosec B108


def segment_path(base_id: int) -> Path:
    """The shared-memory segment of an Envoy running with `base_id`."""
    # Envoy scales the base id by 10 to leave room for its per-epoch socket names.
    return SHM_DIR / f"envoy_shared_memory_{base_id * 10}"


@dataclass
class EnvoyIdentity:
    """Base id and restart epoch of one suite's Envoy."""

    run_dir: Path
    epoch: int = 0
    started: bool = False

    @property
    def base_id_path(self) -> Path:
        """Where the first Envoy writes the base id it picked."""
        return self.run_dir / "envoy.base-id"

    def base_id(self) -> int | None:
        """The suite's base id (None before the first Envoy wrote it)."""
        try:
            text = self.base_id_path.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def first_start(self) -> list[str]:
        """Arguments of the suite's first Envoy: pick a free base id and write it down."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.base_id_path.unlink()  # a stale id from an earlier run is not ours
        self.epoch = 0
        self.started = True
        return [
            "--use-dynamic-base-id",
            "--base-id-path",
            str(self.base_id_path),
            "--restart-epoch",
            "0",
        ]

    def restart(self, *, parent_alive: bool) -> list[str]:
        """Arguments of the next Envoy: a hot restart when the parent is alive."""
        base_id = self.base_id()
        if not self.started or base_id is None:
            return self.first_start()
        self.epoch = self.epoch + 1 if parent_alive else 0
        return ["--base-id", str(base_id), "--restart-epoch", str(self.epoch)]

    def remove_segment(self) -> bool:
        """Remove the suite's segment (after its last Envoy exited); True if one was there."""
        base_id = self.base_id()
        if base_id is None:
            return False
        try:
            segment_path(base_id).unlink()
        except FileNotFoundError:
            return False
        return True
