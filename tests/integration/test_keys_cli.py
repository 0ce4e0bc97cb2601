"""`sluice keys create|list|revoke|rotate` (launcher/keys.py): the secret is printed once and
stored only as an HMAC, list never shows it, and each action is audited. The first call runs
the installed `sluice` as a subprocess; the rest call its `main` in-process (the same
argument parsing and code, without paying the interpreter's start-up per call)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sluice.core.audit import read_records
from sluice.launcher.cli import main
from tests.e2e.conftest import BIN
from tests.support import sha256_hex


def run_sluice(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return subprocess.run(
        [str(BIN / "sluice"), "keys", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


@pytest.fixture
def keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    for name in list(os.environ):
        if name.startswith("SLUICE_"):
            monkeypatch.delenv(name)

    def call(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        try:
            code = main(["keys", *args, "--config", str(config)])
        except SystemExit as exited:  # argparse's refusals
            code = int(exited.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return call


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "sluice.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "router": {
                    "keys": {"store_path": str(tmp_path / "store" / "keys.json")},
                    "api_keys": [{"id": "configured", "sha256": sha256_hex("sk-configured")}],
                },
                # Audit off: key actions are recorded all the same.
                "audit": {"enabled": False, "directory": str(tmp_path / "audit")},
            }
        )
    )
    return path


Keys = Callable[..., subprocess.CompletedProcess[str]]


def test_create_list_rotate_revoke(config: Path, tmp_path: Path, keys: Keys) -> None:
    store = tmp_path / "store" / "keys.json"
    secret = tmp_path / "store" / "keys.json.secret"

    created = run_sluice(
        config, "create", "--id", "alice", "--tenant", "acme", "--name", "ci bot",
        "--expires", "7d", "--model", "default", "--tier", "premium", "--rpm", "120",
        "--budget", "5", "--max-streams", "4",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-sluice-") and len(key) == 53
    assert "shown once" in created.stderr and key not in created.stderr
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
    text = store.read_text()
    assert key not in text
    assert hmac.new(secret.read_bytes(), key.encode(), hashlib.sha256).hexdigest() in text

    listed = keys(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["id"] == "alice" and row["tenant"] == "acme" and row["name"] == "ci bot"
    assert (row["state"], row["tier"], row["models"]) == ("active", "premium", ["default"])
    assert (row["requests_per_minute"], row["budget"], row["max_concurrent_streams"]) == (
        120,
        5.0,
        4,
    )
    assert row["expires"] is not None and row["secrets"] == 1
    table = keys(config, "list")
    assert "alice" in table.stdout and "acme" in table.stdout
    for output in (listed.stdout, table.stdout):
        assert key not in output and "hmac" not in output

    rotated = keys(config, "rotate", "alice", "--overlap", "10m")
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    assert new_key.startswith("sk-sluice-") and new_key != key
    (row,) = json.loads(keys(config, "list", "--json").stdout)
    assert row["secrets"] == 2 and row["rotation_ends"] is not None
    entry = json.loads(store.read_text())["keys"][0]
    ends = [d["not_after"] for d in entry["digests"]]
    assert ends[0] is not None and ends[1] is None

    assert keys(config, "revoke", "alice").returncode == 0
    (row,) = json.loads(keys(config, "list", "--json").stdout)
    assert row["state"] == "revoked"
    again = keys(config, "revoke", "alice")
    assert again.returncode == 1 and "already revoked" in again.stderr

    records = read_records(tmp_path / "audit" / "keys.jsonl")
    actions = [(r["action"], r["target"], r["outcome"]) for r in records]
    assert actions == [
        ("key.created", "alice", "ok"),
        ("key.rotated", "alice", "ok"),
        ("key.revoked", "alice", "ok"),
        ("key.revoke", "alice", "refused"),
    ]
    log = (tmp_path / "audit" / "keys.jsonl").read_text()
    for secret_text in (key, new_key, key[10:], new_key[10:]):
        assert secret_text not in log


def test_refusals_name_the_problem(config: Path, tmp_path: Path, keys: Keys) -> None:
    clash = keys(config, "create", "--id", "configured")
    assert clash.returncode == 1 and "router.api_keys" in clash.stderr
    assert keys(config, "create", "--id", "bob").returncode == 0
    duplicate = keys(config, "create", "--id", "bob")
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr
    missing = keys(config, "rotate", "nobody")
    assert missing.returncode == 1 and "no key 'nobody'" in missing.stderr
    bad_id = keys(config, "revoke", "no spaces")
    assert bad_id.returncode == 2
    bad_duration = keys(config, "rotate", "bob", "--overlap", "soon")
    assert bad_duration.returncode == 2 and "not a duration" in bad_duration.stderr

    bare = tmp_path / "bare.yaml"
    bare.write_text("{}")
    no_store = keys(bare, "list")
    assert no_store.returncode == 1 and "router.keys.store_path" in no_store.stderr
