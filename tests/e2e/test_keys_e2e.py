"""Managed keys and per-key stream caps through the real suite and Envoy (`sluice up`):
revocation without a restart, rotation with no failed request, the development key refused
outside dev mode (and dev mode refused on an exposed edge), and a key's stream cap across
SSE, the OpenAI-compatible API, WebSocket Converse and gRPC Generate."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
import yaml

from sluice.launcher.cli import main
from sluice.router.v1 import router_pb2, router_pb2_grpc
from tests.e2e.conftest import BIN, DEV_KEY, RunningSuite, start_suite

pytestmark = pytest.mark.e2e

SHORT: dict[str, Any] = {
    "model": "default",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 3,
}
LONG: dict[str, Any] = {
    "model": "default",
    "messages": [{"role": "user", "content": "go on"}],
    "max_tokens": 4000,
}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    tmp = tmp_path_factory.mktemp("keys")
    with start_suite(
        tmp,
        router={
            "dev_mode": False,
            "keys": {"store_path": str(tmp / "keys.json"), "reload_interval_s": 0.2},
        },
        # 40 tokens/s for up to 4000 tokens: a LONG stream lasts until the test ends it.
        provider={
            "backends": {
                "simulated": {
                    "time_to_first_token_ms": 20,
                    "tokens_per_second": 40,
                    "answer_tokens": 4000,
                }
            }
        },
    ) as running:
        yield running


def sluice_keys(suite: RunningSuite, *args: str) -> str:
    """`sluice keys ...` on the suite's own config (its `main`, in-process); stdout."""
    out, err = io.StringIO(), io.StringIO()
    config = suite.log_dir.parent / "sluice.yaml"
    # In the suite's directory: the audit log's default directory is relative.
    with (
        contextlib.chdir(suite.log_dir.parent),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(["keys", *args, "--config", str(config)])
    assert code == 0, err.getvalue()
    return out.getvalue().strip()


def error_info(body: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))


def created(suite: RunningSuite, *args: str) -> str:
    """`sluice keys create ...`'s key, once the router has read the changed store (its next
    look, within reload_interval_s)."""
    key = sluice_keys(suite, "create", *args)
    deadline = time.monotonic() + 5
    while complete(suite, key).status_code == 401:
        assert time.monotonic() < deadline, "the new key was not accepted within 5 s"
        time.sleep(0.05)
    return key


def complete(suite: RunningSuite, key: str) -> httpx.Response:
    return httpx.post(
        f"{suite.edge}/v1/complete",
        json=SHORT,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_the_dev_key_is_refused_outside_dev_mode(keyed: RunningSuite) -> None:
    assert "development key sk-sluice-dev refused: dev mode is off" in keyed.banner
    response = complete(keyed, DEV_KEY)
    assert response.status_code == 401
    assert error_info(response.json())["reason"] == "AUTHORIZATION_ERROR"


def test_dev_mode_on_an_exposed_edge_is_refused_naming_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "exposed.yaml"
    config.write_text(yaml.safe_dump({"envoy": {"host": "0.0.0.0"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    done = subprocess.run(
        [str(BIN / "sluice"), "up", "--dev", "--config", str(config),
         "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "refusing to expose the edge" in done.stderr
    assert "router.dev_mode" in done.stderr and "envoy.tls.cert_path" in done.stderr
    assert not (tmp_path / "run" / "router.pid").exists()  # nothing was started


def test_a_revoked_key_is_refused_without_a_restart(keyed: RunningSuite) -> None:
    key = created(keyed, "--id", "to-revoke", "--tenant", "acme")
    ok = complete(keyed, key)
    assert ok.status_code == 200, ok.text
    router_pid = (keyed.log_dir.parent / "run" / "router.pid").read_text()
    sluice_keys(keyed, "revoke", "to-revoke")
    revoked_at = time.monotonic()
    while True:
        response = complete(keyed, key)
        if response.status_code != 200:
            break
        assert time.monotonic() - revoked_at < 5, "the revocation was not seen within 5 s"
        time.sleep(0.05)
    assert response.status_code == 401
    info = error_info(response.json())
    assert (info["reason"], info["metadata"]["cause"]) == ("AUTHORIZATION_ERROR", "revoked_key")
    assert (keyed.log_dir.parent / "run" / "router.pid").read_text() == router_pid


async def test_rotation_with_requests_in_flight_fails_none(keyed: RunningSuite) -> None:
    old = created(keyed, "--id", "rotating", "--tenant", "acme")
    current = {"key": old}
    statuses: list[tuple[int, str]] = []
    failures: list[str] = []
    began = time.monotonic()
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient, *, lazy: bool) -> None:
        # `lazy` clients keep the old key for a while after the rotation, as real ones do.
        key = old
        while not stop.is_set():
            if not lazy or current.get("switch_lazy"):
                key = current["key"]
            body = {**SHORT, "max_tokens": 8}  # 0.2 s at 40 tokens/s: in flight across it
            response = await http.post(
                f"{keyed.edge}/v1/complete",
                json=body,
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
            which = "old" if key == old else "new"
            statuses.append((response.status_code, which))
            if response.status_code != 200:
                failures.append(f"{which} at {time.monotonic() - began:.2f} s: {response.text}")

    async with httpx.AsyncClient() as http:
        clients = [asyncio.create_task(client(http, lazy=index % 2 == 1)) for index in range(6)]
        await asyncio.sleep(1.0)
        new = await asyncio.to_thread(sluice_keys, keyed, "rotate", "rotating", "--overlap", "4s")
        # The router accepts the new secret from its next look at the store (0.2 s here);
        # a real rollout of the new key to clients takes longer than that.
        await asyncio.sleep(0.5)
        current["key"] = new
        await asyncio.sleep(1.5)
        current["switch_lazy"] = "yes"
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
    assert new != old
    assert not failures, f"{len(failures)} of {len(statuses)} failed: {failures[:3]}"
    assert {"old", "new"} <= {which for _, which in statuses}
    assert sum(which == "old" for _, which in statuses) > 10
    # Once the overlap has ended the old secret is refused; the new one works.
    await asyncio.sleep(1.0)
    refused = complete(keyed, old)
    assert refused.status_code == 401
    assert error_info(refused.json())["metadata"]["cause"] == "rotated_key"
    assert complete(keyed, new).status_code == 200


# -- stream caps ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sse_stream(suite: RunningSuite, key: str) -> AsyncIterator[httpx.Response]:
    """A long /v1/generate SSE stream, open once its first data event arrived."""
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST", f"{suite.edge}/v1/generate", json=LONG,
            headers={"authorization": f"Bearer {key}"},
        ) as response,
    ):  # fmt: skip
        assert response.status_code == 200
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: ") and '"data"' in line:
                break
        yield response


@contextlib.asynccontextmanager
async def websocket(suite: RunningSuite, key: str) -> AsyncIterator[Any]:
    """A Converse WebSocket: it holds a stream for its whole life, turn or not."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{suite.edge}/v1/ws", headers={"authorization": f"Bearer {key}"}) as ws,
    ):
        await ws.send_str(json.dumps({"prompt": {"turn_id": "t", "request": SHORT}}))
        while True:
            message = await asyncio.wait_for(ws.receive(), timeout=15)
            event = json.loads(message.data)["event"]
            if "complete" in event:
                break
            assert "error" not in event, event
        yield ws


async def grpc_first_event(suite: RunningSuite, key: str) -> router_pb2.GenerateEvent:
    """The first event of a gRPC Generate through Envoy's edge (then the call is cancelled)."""
    async with grpc.aio.insecure_channel(suite.grpc("envoy")) as channel:
        call = router_pb2_grpc.RouterServiceStub(channel).Generate(
            router_pb2.GenerateRequest(**LONG),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=30,
        )
        event = await call.read()
        assert isinstance(event, router_pb2.GenerateEvent)
        call.cancel()
        return event


async def open_streams(suite: RunningSuite) -> float:
    """Streams the router counts as held by keys (sluice_router_key_streams_open)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(suite.metrics_url("router"), timeout=5)).text
    line = next(ln for ln in text.splitlines() if ln.startswith("sluice_router_key_streams_open "))
    return float(line.split()[1])


async def wait_open(suite: RunningSuite, count: float) -> None:
    deadline = time.monotonic() + 10
    while await open_streams(suite) != count:
        assert time.monotonic() < deadline, f"{await open_streams(suite)} streams, not {count}"
        await asyncio.sleep(0.05)


async def test_a_keys_stream_cap_holds_across_transports(keyed: RunningSuite) -> None:
    capped = created(keyed, "--id", "capped", "--max-streams", "2")
    other = created(keyed, "--id", "other")
    await wait_open(keyed, 0)
    async with websocket(keyed, capped), sse_stream(keyed, capped):
        await wait_open(keyed, 2)
        # The third stream of the key is refused on every transport, typed.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await grpc_first_event(keyed, capped)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        refused = complete(keyed, capped)
        assert refused.status_code == 429
        info = error_info(refused.json())
        assert (info["reason"], info["metadata"]["limit"]) == (
            "QUOTA_EXCEEDED",
            "max_concurrent_streams",
        )
        async with httpx.AsyncClient(timeout=30) as http_client:
            openai = await http_client.post(
                f"{keyed.edge}/v1/chat/completions",
                json={**SHORT, "stream": True},
                headers={"authorization": f"Bearer {capped}"},
            )
        assert openai.status_code == 429
        assert openai.json()["error"]["type"] == "rate_limit_error"
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                f"{keyed.edge}/v1/ws", headers={"authorization": f"Bearer {capped}"}
            ) as ws,
        ):
            message = await asyncio.wait_for(ws.receive(), timeout=15)
            assert json.loads(message.data)["event"]["error"]["reason"] == "QUOTA_EXCEEDED"
        # Another key is not affected.
        assert (await grpc_first_event(keyed, other)).HasField("metadata")
        assert complete(keyed, other).status_code == 200
    # Both ended by the client (socket closed, SSE stream dropped): both slots are free.
    await wait_open(keyed, 0)
    assert (await grpc_first_event(keyed, capped)).HasField("metadata")
    await wait_open(keyed, 0)  # the cancelled gRPC call released its slot too
    async with sse_stream(keyed, capped):
        assert complete(keyed, capped).status_code == 200  # a second at once is within 2
        await wait_open(keyed, 1)
    await wait_open(keyed, 0)
