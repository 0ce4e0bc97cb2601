"""The Go stubs (clients/go/src/sluice.dev/sluice/gen/) are current, build, and their
example client streams, reads an error's ErrorInfo and cancels against a live suite.

Go, protoc-gen-go, protoc-gen-go-grpc and the grpc-go sources are Debian packages
(`make tools`); their absence fails these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs.blocks import ROOT
from tests.docs.test_typescript_client import _cancelled, _differences
from tests.e2e.conftest import RunningSuite

CLIENT = ROOT / "clients" / "go"
GEN = CLIENT / "src" / "sluice.dev" / "sluice" / "gen"
# GOPATH mode over Debian's Go sources (/usr/share/gocode): there is no Go module proxy
# here, and the Debian packages pin grpc-go and protobuf-go together (docs/clients.md).
GOPATH = f"{CLIENT}:/usr/share/gocode"


def _go_env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": GOPATH,
        "GOCACHE": str(tmp / "go-cache"),
        "GOFLAGS": "",
    }


def test_go_stubs_are_up_to_date(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_go_client.py"), str(fresh)],
        capture_output=True, text=True, cwd=ROOT, timeout=100, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    stale = _differences(GEN, fresh)
    assert stale == [], f"clients/go stubs are stale ({stale}): run `make gen`"


def test_go_example_is_gofmt_clean() -> None:
    gofmt = shutil.which("gofmt")
    assert gofmt, "gofmt is not installed: run `make tools`"
    result = subprocess.run(
        [gofmt, "-l", str(CLIENT / "src" / "sluice.dev" / "sluice" / "example")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


@pytest.mark.e2e
def test_go_example_client_against_the_suite(docs_suite: RunningSuite, tmp_path: Path) -> None:
    go = shutil.which("go")
    assert go, "go is not installed: run `make tools`"
    binary = tmp_path / "example"
    env = _go_env(tmp_path)
    for step in (["vet"], ["build", "-o", str(binary)]):
        built = subprocess.run(
            [go, *step, "sluice.dev/sluice/example"],
            capture_output=True, text=True, timeout=300, check=False, env=env,
        )  # fmt: skip
        assert built.returncode == 0, built.stdout + built.stderr
    cancelled_before = _cancelled(docs_suite)
    # Through the Envoy edge, as a client outside the suite would call.
    run = subprocess.run(
        [str(binary), f"127.0.0.1:{docs_suite.ports['envoy']}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    kinds = result["kinds"]
    assert kinds[0] == "metadata" and kinds[-1] == "complete", kinds
    assert kinds.count("complete") == 1 and "error" not in kinds
    assert result["outputTokens"] == 8 and result["text"].strip()
    # gRPC code numbers: 16 UNAUTHENTICATED, 1 CANCELLED.
    assert result["error"] == {
        "code": "16",
        "reason": "AUTHORIZATION_ERROR",
        "domain": "sluice.dev",
    }
    assert result["cancel"]["cancelCode"] == "1"
    assert 3 <= result["cancel"]["received"] < 400
    deadline = time.monotonic() + 5
    while _cancelled(docs_suite) <= cancelled_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _cancelled(docs_suite) > cancelled_before
