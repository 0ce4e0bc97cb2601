"""End-to-end: the real suite (four services + Envoy) driven as a newcomer would."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.router.v1 import router_pb2, router_pb2_grpc
from sluice.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.e2e.conftest import BIN, DEV_KEY, RunningSuite, start_suite

pytestmark = pytest.mark.e2e

AUTH = {"authorization": f"Bearer {DEV_KEY}"}
BODY: dict[str, Any] = {
    "model": "default",
    "messages": [{"role": "user", "content": "Tell me about sluices"}],
    "max_tokens": 8,
}


def grpcurl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "grpcurl"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_stream(text: str) -> list[dict[str, Any]]:
    """Parse grpcurl's concatenated pretty-printed JSON messages."""
    decoder, index = json.JSONDecoder(), 0
    objects: list[dict[str, Any]] = []
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return objects
        obj, index = decoder.raw_decode(text, index)
        objects.append(obj)


def sse_events(response: httpx.Response) -> list[tuple[float, dict[str, Any]]]:
    """(arrival time, event) for each `data:` line of an SSE response."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append((time.monotonic(), json.loads(line[len("data: ") :])))
    return events


def event_kinds(events: list[dict[str, Any]]) -> list[str]:
    return [next(k for k in e if k != "sequence") for e in events]


def rich_details(err: grpc.RpcError) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
                    if detail.Is(cls.DESCRIPTOR):
                        message = cls()
                        detail.Unpack(message)
                        found[cls.__name__] = message
    return found


def scrape(url: str) -> str:
    return httpx.get(url, timeout=5).text


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- discovery and health ------------------------------------------------------------


def test_banner_lists_every_listener_and_the_dev_key(suite: RunningSuite) -> None:
    for part in ("router", "limiter", "provider", "telemetry", "envoy", "envoy_admin"):
        assert str(suite.ports[part]) in suite.banner
    assert "sk-sluice-dev" in suite.banner
    assert "development key accepted: dev mode" in suite.banner  # router.dev_mode in its config


@pytest.mark.parametrize(
    ("part", "service"),
    [
        ("router", "sluice.router.v1.RouterService"),
        ("limiter", "sluice.limiter.v1.LimiterService"),
        ("provider", "sluice.provider.v1.ProviderService"),
    ],
)
def test_grpcurl_lists_service_health_and_reflection(
    suite: RunningSuite, part: str, service: str
) -> None:
    result = grpcurl(*suite.grpcurl_tls(part), suite.grpc(part), "list")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    assert service in listed
    assert "grpc.health.v1.Health" in listed
    assert "grpc.reflection.v1alpha.ServerReflection" in listed


def test_all_four_services_report_serving(suite: RunningSuite) -> None:
    for part in ("router", "limiter", "provider", "telemetry"):
        with suite.sync_channel(part) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert response.status == health_pb2.HealthCheckResponse.SERVING, part


# -- the streamed request --------------------------------------------------------------


def test_grpcurl_generate_streams_metadata_data_progress_complete(suite: RunningSuite) -> None:
    result = grpcurl(
        *suite.grpcurl_tls("router"),
        "-H",
        f"authorization: Bearer {DEV_KEY}",
        "-d",
        json.dumps({**BODY, "max_tokens": 64}),
        suite.grpc("router"),
        "sluice.router.v1.RouterService/Generate",
    )
    assert result.returncode == 0, result.stderr
    events = json_stream(result.stdout)
    kinds = event_kinds(events)
    assert kinds[0] == "metadata"
    assert kinds[-1] == "complete"
    assert kinds.count("complete") == 1
    assert "progress" in kinds
    data = [e["data"] for e in events if "data" in e]
    assert data and all(d["text"] for d in data)
    complete = events[-1]["complete"]
    usage = complete["usage"]
    assert usage["input_tokens"] == 4  # "Tell me about sluices"
    assert usage["output_tokens"] == sum(d["token_count"] for d in data) > 0
    assert complete["fallback_step"] == "FALLBACK_STEP_PRIMARY"
    assert re.fullmatch(r"[0-9a-f]{32}", events[0]["metadata"]["trace_id"])


def test_native_grpc_through_envoy(suite: RunningSuite) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{suite.ports['envoy']}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        events = list(
            stub.Generate(
                router_pb2.GenerateRequest(**BODY), metadata=list(AUTH.items()), timeout=30
            )
        )
    assert events[0].WhichOneof("event") == "metadata"
    assert events[-1].WhichOneof("event") == "complete"
    assert events[-1].complete.usage.output_tokens == 8


def test_sse_through_envoy_arrives_incrementally(suite: RunningSuite) -> None:
    # The simulated model paces 20 tokens/s here, so 8 tokens take ~350 ms after the first.
    with httpx.stream(
        "POST", f"{suite.edge}/v1/generate", json=BODY, headers=AUTH, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        timed = sse_events(response)
    kinds = event_kinds([e for _, e in timed])
    assert kinds[0] == "metadata" and kinds[-1] == "complete"
    data_times = [t for t, e in timed if "data" in e]
    assert len(data_times) >= 4
    # Buffered delivery would land everything within a few ms of the end.
    assert data_times[-1] - data_times[0] > 0.2
    assert timed[-1][0] - data_times[0] > 0.2


def test_unary_complete_returns_whole_text_and_usage(suite: RunningSuite) -> None:
    response = httpx.post(f"{suite.edge}/v1/complete", json=BODY, headers=AUTH, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["usage"]["output_tokens"] == 8
    assert len(body["text"].split()) == 8
    assert body["finish_reason"] == "FINISH_REASON_LENGTH"
    assert body["fallback_step"] == "FALLBACK_STEP_PRIMARY"
    # Same prompt, same answer: the streamed text concatenates to the unary text.
    with httpx.stream(
        "POST", f"{suite.edge}/v1/generate", json=BODY, headers=AUTH, timeout=30
    ) as r:
        streamed = "".join(e["data"]["text"] for _, e in sse_events(r) if "data" in e)
    assert streamed == body["text"]


def test_list_models_through_envoy(suite: RunningSuite) -> None:
    response = httpx.get(f"{suite.edge}/v1/models", headers=AUTH, timeout=10)
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["models"]] == ["default"]


# -- bad input ------------------------------------------------------------------------


def error_info(body: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))


def field_violations(body: dict[str, Any]) -> list[dict[str, Any]]:
    for detail in body["details"]:
        if detail["@type"].endswith("google.rpc.BadRequest"):
            return list(detail["field_violations"])
    return []


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer sk-wrong"}, {"x-api-key": "nope"}]
)
def test_missing_or_wrong_key_is_401_json(suite: RunningSuite, headers: dict[str, str]) -> None:
    response = httpx.post(f"{suite.edge}/v1/generate", json=BODY, headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert error_info(body)["reason"] == "AUTHORIZATION_ERROR"


def test_missing_key_over_grpc_is_unauthenticated_with_error_info(suite: RunningSuite) -> None:
    with suite.sync_channel("router") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Generate(router_pb2.GenerateRequest(**BODY), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich_details(caught.value)["ErrorInfo"].reason == "AUTHORIZATION_ERROR"


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ({"model": "default"}, "messages", "MISSING_PARAMETER"),
        ({**BODY, "max_tokens": 100000}, "max_tokens", "VALIDATION_ERROR"),
        ({**BODY, "max_tokens": -1}, "max_tokens", "VALIDATION_ERROR"),
        ({**BODY, "model": "gpt-unknown"}, "model", "VALIDATION_ERROR"),
        (
            {**BODY, "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "VALIDATION_ERROR",
        ),
    ],
)
def test_invalid_requests_are_400_with_field_violations(
    suite: RunningSuite, payload: dict[str, Any], field: str, reason: str
) -> None:
    response = httpx.post(f"{suite.edge}/v1/generate", json=payload, headers=AUTH, timeout=10)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error_info(body)["reason"] == reason
    assert field in [v["field"] for v in field_violations(body)]
    if field == "model":
        assert "gpt-unknown" in body["message"]


def test_invalid_request_over_grpc_carries_bad_request(suite: RunningSuite) -> None:
    with suite.sync_channel("router") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Complete(
                router_pb2.CompleteRequest(model="default", max_tokens=5),
                metadata=list(AUTH.items()),
                timeout=10,
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = rich_details(caught.value)["BadRequest"].field_violations
    assert [v.field for v in violations] == ["messages"]


@pytest.mark.parametrize("raw", [b"{bad json", b"[1,2", b"\xff\xfe", b'{"messages": "x"}'])
def test_malformed_json_is_400_json(suite: RunningSuite, raw: bytes) -> None:
    response = httpx.post(
        f"{suite.edge}/v1/generate",
        content=raw,
        headers={**AUTH, "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error_info(body)["reason"] == "INVALID_INPUT"


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nope"), ("DELETE", "/v1/models"), ("GET", "/v1/generate")]
)
def test_unknown_paths_and_methods_are_rejected_as_json(
    suite: RunningSuite, method: str, path: str
) -> None:
    response = httpx.request(method, f"{suite.edge}{path}", headers=AUTH, timeout=10)
    assert response.status_code == 404
    assert error_info(response.json())["reason"] == "UNSUPPORTED_OPERATION"


# -- tracing, metrics, cancellation --------------------------------------------------------


def test_one_generate_is_one_trace_across_router_limiter_provider(suite: RunningSuite) -> None:
    # A user of its own: the first request of a subject always asks the limiter (later
    # ones may be admitted from a lease, without a limiter span).
    body = {**BODY, "user": "trace-across-services"}
    with httpx.stream(
        "POST", f"{suite.edge}/v1/generate", json=body, headers=AUTH, timeout=30
    ) as r:
        events = [e for _, e in sse_events(r)]
    trace_id = events[0]["metadata"]["trace_id"]
    with suite.sync_channel("telemetry") as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        deadline = time.monotonic() + 10
        spans: list[telemetry_pb2.Span] = []
        while time.monotonic() < deadline:
            try:
                spans = list(
                    stub.GetTrace(telemetry_pb2.GetTraceRequest(trace_id=trace_id), timeout=5).spans
                )
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
            # 2 Envoy + the edge rate-limit pair + 7 service spans (bulkhead wait, cache write)
            if len(spans) >= 11:
                break
            time.sleep(0.1)
    services = {s.service_name for s in spans}
    assert {"sluice-router", "sluice-limiter", "sluice-provider"} <= services
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    # Envoy's tracer starts the trace (tests/e2e/test_tracing.py checks the whole tree).
    assert len(roots) == 1 and roots[0].service_name == "sluice-envoy"
    assert all(s.parent_span_id in ids for s in spans if s.parent_span_id)
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano > 0 for s in spans)
    names = {(s.service_name, s.kind, s.name) for s in spans}
    assert (
        "sluice-provider",
        "SPAN_KIND_SERVER",
        "/sluice.provider.v1.ProviderService/Stream",
    ) in names
    assert (
        "sluice-limiter",
        "SPAN_KIND_SERVER",
        "/sluice.limiter.v1.LimiterService/Acquire",
    ) in names


def test_every_service_exposes_prometheus_metrics(suite: RunningSuite) -> None:
    # One unary call and one stream of this test's own (a whole answer has no first
    # token to time), so the test holds when run alone.
    httpx.post(f"{suite.edge}/v1/complete", json=BODY, headers=AUTH, timeout=30)
    httpx.post(f"{suite.edge}/v1/generate", json=BODY, headers=AUTH, timeout=30)
    router = scrape(suite.metrics_url("router"))
    assert (
        metric_value(
            router,
            "sluice_rpc_requests_total",
            method="/sluice.router.v1.RouterService/Complete",
            code="OK",
        )
        >= 1
    )
    assert (
        metric_value(router, "sluice_router_time_to_first_token_seconds_count", model="default")
        >= 1
    )
    assert metric_value(router, "sluice_router_tokens_streamed_total", model="default") >= 8
    for part in ("limiter", "provider", "telemetry"):
        assert "sluice_rpc_duration_seconds" in scrape(suite.metrics_url(part)), part


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_client_disconnect_cancels_the_provider_stream(suite: RunningSuite, http2: bool) -> None:
    before = metric_value(
        scrape(suite.metrics_url("provider")), "sluice_provider_streams_total", outcome="cancelled"
    )
    long_body = {**BODY, "max_tokens": 200, "messages": [{"role": "user", "content": "long one"}]}
    with (
        httpx.Client(http1=not http2, http2=http2, trust_env=False, timeout=30) as http,
        http.stream("POST", f"{suite.edge}/v1/generate", json=long_body, headers=AUTH) as r,
    ):
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        for line in r.iter_lines():
            if '"data"' in line:
                break  # leave mid-stream: closing the connection / resetting the h2 stream
    deadline = time.monotonic() + 5
    after = before
    while time.monotonic() < deadline and after <= before:
        time.sleep(0.05)
        after = metric_value(
            scrape(suite.metrics_url("provider")),
            "sluice_provider_streams_total",
            outcome="cancelled",
        )
    assert after == before + 1


# -- lifecycle -------------------------------------------------------------------------------


def test_sigterm_lets_an_inflight_stream_finish_and_leaves_no_process(tmp_path: Path) -> None:
    with start_suite(tmp_path) as running:
        pids = running.descendants()
        assert len(pids) >= 5  # four services and Envoy
        events: list[dict[str, Any]] = []
        failure: list[BaseException] = []

        def stream() -> None:
            body = {**BODY, "max_tokens": 20}  # ~1 s at 20 tokens/s
            try:
                with running.sync_channel("router") as channel:
                    stub = router_pb2_grpc.RouterServiceStub(channel)
                    for event in stub.Generate(
                        router_pb2.GenerateRequest(**body), metadata=list(AUTH.items()), timeout=30
                    ):
                        events.append({event.WhichOneof("event"): event})
            except BaseException as err:
                failure.append(err)

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = time.monotonic() + 10
        while not any("data" in e for e in events) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any("data" in e for e in events), "stream did not start"
        running.process.send_signal(signal.SIGTERM)
        reader.join(timeout=30)
        assert not failure, failure
        assert "complete" in events[-1]
        assert events[-1]["complete"].complete.usage.output_tokens == 20
        assert running.process.wait(timeout=30) == 0
        time.sleep(0.2)
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert not alive, f"left behind: {alive}"


def test_bad_config_fails_fast_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("router:\n  server:\n    port: 99999\n")
    result = subprocess.run(
        [str(BIN / "sluice"), "up", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "router.server.port" in result.stderr
