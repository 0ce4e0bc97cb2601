"""End-to-end resilience: two provider replicas, two back ends, faults, a killed replica."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from sluice.router.v1 import router_pb2, router_pb2_grpc
from tests.e2e.conftest import DEV_KEY, RunningSuite, free_ports, start_suite

pytestmark = pytest.mark.e2e

AUTH = [("authorization", f"Bearer {DEV_KEY}")]
DEV_SHA = hashlib.sha256(DEV_KEY.encode()).hexdigest()
NARROW_KEY = "sk-narrow-tier"
NARROW_SHA = hashlib.sha256(NARROW_KEY.encode()).hexdigest()
FAST = {"time_to_first_token_ms": 5, "tokens_per_second": 400, "answer_tokens": 24}


def resilient_overrides(replica: tuple[int, int]) -> dict[str, Any]:
    """Two replicas, primary + secondary, fault injection on."""
    return {
        "provider": {
            "replicas": 2,
            "replica_ports": [{"port": replica[0], "metrics_port": replica[1]}],
            "fault_injection": True,
            "backends": {"primary": FAST, "secondary": FAST},
        },
        "router": {
            "api_keys": [
                {"id": "dev", "sha256": DEV_SHA},
                {"id": "narrow", "sha256": NARROW_SHA, "models": ["strict"]},
            ],
            "models": {
                "default": {
                    "backends": [{"backend": "primary"}, {"backend": "secondary"}],
                    "simplified_text": "Degraded: please retry shortly.",
                },
                "strict": {"backends": [{"backend": "primary"}, {"backend": "secondary"}]},
            },
            # Breakers out of the way here (the scenarios share the back ends); they are
            # proven in tests/integration/test_resilience.py and by the chaos run.
            "resilience": {"breaker": {"failure_threshold": 1000}},
        },
    }


@pytest.fixture(scope="module")
def resilient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    replica = free_ports(2)
    overrides = resilient_overrides((replica[0], replica[1]))
    with start_suite(tmp_path_factory.mktemp("resilient"), **overrides) as running:
        running.ports["provider2"] = replica[0]
        yield running


def generate(
    suite: RunningSuite, prompt: str, *, fault: str = "", deadline: float = 20
) -> list[router_pb2.GenerateEvent]:
    metadata = AUTH + ([("x-sluice-fault", fault)] if fault else [])
    with suite.sync_channel("router") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        return list(
            stub.Generate(
                router_pb2.GenerateRequest(
                    model="default",
                    messages=[{"role": "user", "content": prompt}],
                ),
                metadata=metadata,
                timeout=deadline,
            )
        )


def pid_of(suite: RunningSuite, part: str) -> int:
    run_dir = suite.log_dir.parent / "run"
    return int((run_dir / f"{part}.pid").read_text())


def test_banner_lists_both_provider_replicas(resilient: RunningSuite) -> None:
    line = next(x for x in resilient.banner.splitlines() if "provider-2" in x)
    assert f"grpc 127.0.0.1:{resilient.ports['provider2']}" in line


def test_killed_replica_is_restarted_and_no_request_fails(resilient: RunningSuite) -> None:
    victim = pid_of(resilient, "provider-2")
    os.kill(victim, signal.SIGKILL)
    outcomes = [generate(resilient, f"while a replica is down {i}")[-1] for i in range(30)]
    assert all(event.HasField("complete") for event in outcomes)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and pid_of(resilient, "provider-2") == victim:
        time.sleep(0.05)
    replacement = pid_of(resilient, "provider-2")
    assert replacement != victim
    assert Path(f"/proc/{replacement}").exists()
    assert resilient.process.poll() is None  # the suite kept running


def test_failover_through_envoy_sse(resilient: RunningSuite) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "sse failover"}]}
    headers = {
        "authorization": f"Bearer {DEV_KEY}",
        "x-sluice-fault": "drop_after_tokens=3,backend=primary",
    }
    with httpx.Client(timeout=30, trust_env=False) as client:
        response = client.post(f"{resilient.edge}/v1/generate", json=body, headers=headers)
    assert response.status_code == 200
    events = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    providers = [e["metadata"]["provider"] for e in events if "metadata" in e]
    assert providers == ["primary", "secondary"]
    assert "complete" in events[-1]
    assert events[-1]["complete"]["fallback_step"] == "FALLBACK_STEP_SECONDARY"


@pytest.mark.parametrize(
    ("fault", "status", "reason"),
    [
        ("error_rate=1", 503, "SERVICE_UNAVAILABLE"),
        ("rate_limit_rate=1,retry_after_ms=60000", 429, "RATE_LIMIT_EXCEEDED"),
        ("context_length_error=1", 400, "TOKEN_LIMIT_EXCEEDED"),
        ("malformed_chunk=1", 502, "INVALID_RESPONSE"),
    ],
)
def test_upstream_failures_map_to_http_statuses_and_one_json_shape(
    resilient: RunningSuite, fault: str, status: int, reason: str
) -> None:
    body = {"model": "strict", "messages": [{"role": "user", "content": f"never cached {fault}"}]}
    headers = {"authorization": f"Bearer {DEV_KEY}", "x-sluice-fault": fault}
    with httpx.Client(timeout=30, trust_env=False) as client:
        response = client.post(f"{resilient.edge}/v1/complete", json=body, headers=headers)
        # With a simplified answer configured, the chain serves it rather than fail.
        body["model"] = "default"
        degraded = client.post(f"{resilient.edge}/v1/complete", json=body, headers=headers)
    if reason == "TOKEN_LIMIT_EXCEEDED":
        assert degraded.status_code == 400  # the client's mistake: not papered over
    else:
        assert degraded.status_code == 200, degraded.text
        assert degraded.json()["fallback_step"] == "FALLBACK_STEP_SIMPLIFIED"
        assert degraded.json()["text"] == "Degraded: please retry shortly."
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"code", "message", "details"}
    infos = [d for d in error["details"] if d["@type"].endswith("ErrorInfo")]
    assert infos[0]["reason"] == reason
    assert "Traceback" not in response.text


def error_body(response: httpx.Response) -> dict[str, Any]:
    """The one JSON error shape of the edge: {code, message, details[]}."""
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details"}, body
    assert "x-sluice-http-status" not in response.headers
    return body


def reason_of(body: dict[str, Any]) -> str:
    infos = [d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert len(infos) == 1
    assert infos[0]["domain"] == "sluice.dev"
    return str(infos[0]["reason"])


def test_model_outside_the_tier_is_403(resilient: RunningSuite) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30, trust_env=False) as client:
        response = client.post(
            f"{resilient.edge}/v1/complete",
            json=body,
            headers={"authorization": f"Bearer {NARROW_KEY}"},
        )
    assert response.status_code == 403
    assert reason_of(error_body(response)) == "BUSINESS_RULE_VIOLATION"


def test_native_grpc_through_envoy_keeps_grpc_statuses(resilient: RunningSuite) -> None:
    # The status rewrite applies to JSON only: a gRPC client still gets its own code.
    with grpc.insecure_channel(f"127.0.0.1:{resilient.ports['envoy']}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(
                stub.Generate(
                    router_pb2.GenerateRequest(
                        model="strict",
                        messages=[{"role": "user", "content": "grpc malformed"}],
                    ),
                    metadata=[*AUTH, ("x-sluice-fault", "malformed_chunk=1")],
                    timeout=20,
                )
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_router_over_its_memory_bound_is_503_out_of_memory(tmp_path: Path) -> None:
    with start_suite(tmp_path, router={"resilience": {"memory_limit_mb": 1}}) as running:
        body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=30, trust_env=False) as client:
            response = client.post(
                f"{running.edge}/v1/complete",
                json=body,
                headers={"authorization": f"Bearer {DEV_KEY}"},
            )
        assert response.status_code == 503
        assert reason_of(error_body(response)) == "OUT_OF_MEMORY"
        assert running.process.poll() is None  # shed load, not killed
