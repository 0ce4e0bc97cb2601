"""The audit log: JSON Lines read back, rotated by size, never a prompt (core/audit.py)."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

from sluice.core.audit import AdminRecord, AuditLog, AuditSettings, RequestRecord, read_records


def test_requests_and_admin_actions_are_read_back_in_order(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(enabled=True, directory=tmp_path), "router")
    log.request(
        RequestRecord(
            key_id="k1",
            tenant="acme",
            model="default",
            outcome="ok",
            input_tokens=7,
            output_tokens=12,
            cost=0.0004,
            request_id="r-1",
            trace_id="a" * 32,
            service="router",
        )
    )
    log.admin(AdminRecord(action="key.revoked", actor="operator", target="k1"))
    log.close()
    log.request(RequestRecord(key_id="late", tenant="", model="", outcome="ok"))  # ignored

    first, second = read_records(tmp_path / "router.jsonl")
    assert first["kind"] == "request"
    assert {k: first[k] for k in ("key_id", "tenant", "input_tokens", "cost", "outcome")} == {
        "key_id": "k1",
        "tenant": "acme",
        "input_tokens": 7,
        "cost": 0.0004,
        "outcome": "ok",
    }
    assert str(first["time"]).endswith("+00:00")
    assert (second["kind"], second["action"], second["target"]) == ("admin", "key.revoked", "k1")
    assert stat.S_IMODE((tmp_path / "router.jsonl").stat().st_mode) == 0o600


def test_no_record_type_can_carry_prompt_or_completion_text() -> None:
    for record in (RequestRecord, AdminRecord):
        names = {field.name for field in dataclasses.fields(record)}
        assert not names & {"prompt", "messages", "content", "completion", "text"}


def test_free_text_is_cut_short(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(enabled=True, directory=tmp_path), "limiter")
    log.admin(AdminRecord(action="config.reloaded", actor="op", detail="x" * 10_000))
    log.close()
    [record] = read_records(tmp_path / "limiter.jsonl")
    assert len(str(record["detail"])) == 200


def test_the_log_rotates_by_size_and_keeps_the_newest(tmp_path: Path) -> None:
    settings = AuditSettings(enabled=True, directory=tmp_path, max_bytes=2048, backups=2)
    log = AuditLog(settings, "router")
    for index in range(300):
        log.request(RequestRecord(key_id=f"k{index}", tenant="t", model="m", outcome="ok"))
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["router.jsonl", "router.jsonl.1", "router.jsonl.2"]
    assert all((tmp_path / name).stat().st_size <= 2048 for name in files)
    records = read_records(tmp_path / "router.jsonl")
    keys = [r["key_id"] for r in records]
    assert keys[-1] == "k299"
    assert keys == [f"k{i}" for i in range(300 - len(keys), 300)]  # contiguous, newest kept
    assert len(keys) < 300  # the oldest were dropped
