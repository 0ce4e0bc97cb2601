"""The audit log: append-only JSON Lines of authenticated requests and admin actions.

One line per event, written by a background thread (the standard library's QueueHandler
and QueueListener) so the event loop never waits on the disk, to a file per process
rotated by size (RotatingFileHandler): `<directory>/<part>.jsonl`, then `.1` ... `.N`,
the oldest dropped (one writer per file: processes never rotate each other's files).
Retention is therefore `max_bytes x (backups + 1)`; keep the rotated files elsewhere
(shipped to a log store) for longer retention (docs/security.md).

What a line may hold is fixed by the record types below: identifiers, counts, cost and
outcome, never prompt or completion text (a record has no field that could carry it, and
free-text fields are cut short).
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import queue
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

_MAX_TEXT = 200  # free-text fields (reasons, targets) are short by construction


class AuditSettings(BaseModel):
    """Where the audit log goes and how much of it is kept."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = False
    """Write the audit log."""
    directory: Path = Path("audit")
    """Where each part writes `<part>.jsonl` (rotated files get `.1`, `.2`... beside it)."""
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    """Size at which the file is rotated."""
    backups: int = Field(10, ge=1, le=1000)
    """Rotated files kept: retention is max_bytes x (backups + 1) bytes of events."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One authenticated request, as it ended."""

    key_id: str
    tenant: str
    model: str
    outcome: str
    """"ok" or the error reason (e.g. RATE_LIMIT_EXCEEDED)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    request_id: str = ""
    trace_id: str = ""
    service: str = ""


@dataclass(frozen=True, slots=True)
class AdminRecord:
    """One administrative action or security decision."""

    action: str
    """E.g. certificates.issued, key.created, key.revoked, config.reloaded, call.refused."""
    actor: str
    """Who did it: an identity, an operator's name, or the tool."""
    target: str = ""
    outcome: str = "ok"
    detail: str = ""
    service: str = ""


def _short(text: str) -> str:
    return text[:_MAX_TEXT]


class AuditLog:
    """Appends records to the rotated JSON Lines file; `close` flushes and stops."""

    def __init__(self, settings: AuditSettings, part: str) -> None:
        path = settings.directory / f"{part}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only from the first byte: the log names keys and tenants.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        self.path = path
        handler = logging.handlers.RotatingFileHandler(
            path, mode="a", maxBytes=settings.max_bytes, backupCount=settings.backups
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._handler = handler
        self._logger = logging.Logger(f"sluice.audit.{id(self)}")
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._logger.propagate = False
        self._listener.start()
        self._closed = False

    def _write(self, kind: str, fields: dict[str, object]) -> None:
        if self._closed:
            return
        line = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "kind": kind,
            **fields,
        }
        self._logger.info(json.dumps(line, ensure_ascii=False, separators=(",", ":")))

    def request(self, record: RequestRecord) -> None:
        """Record an authenticated request."""
        fields = asdict(record)
        for name in ("key_id", "tenant", "model", "outcome", "request_id", "trace_id"):
            fields[name] = _short(str(fields[name]))
        self._write("request", fields)

    def admin(self, record: AdminRecord) -> None:
        """Record an administrative action or a security decision."""
        self._write("admin", {k: _short(str(v)) for k, v in asdict(record).items()})

    def close(self) -> None:
        """Write what is queued and stop the writer thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._listener.stop()
        self._handler.close()


def read_records(path: Path) -> list[dict[str, object]]:
    """Every record of an audit log, oldest first, rotated files included."""
    files = sorted(
        path.parent.glob(path.name + ".*"),
        key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
        reverse=True,
    )
    records: list[dict[str, object]] = []
    for file in [*files, path]:
        if file.is_file():
            records += [json.loads(line) for line in file.read_text().splitlines() if line]
    return records
