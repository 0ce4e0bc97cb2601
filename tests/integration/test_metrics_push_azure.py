"""Azure Monitor metrics push (core/telemetry/metrics_azure.py) to a local receiver of
Application Insights' track endpoint that validates each MetricData envelope
(tests/unit/telemetry/receivers.py). No test talks to Azure: the receiver speaks the
ingestion wire format (POST /v2.1/track, JSON array, 200/206/429/503 answers)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

from sluice.core.config import ConfigError, MetricsExportSettings
from sluice.core.telemetry.metrics_push import MetricsPusher
from tests.unit.telemetry.receivers import Receiver, Reply, metric_envelopes, start_receiver

IKEY = "11111111-2222-3333-4444-555555555555"
ACCEPTED = b'{"itemsReceived":1,"itemsAccepted":1,"errors":[]}'
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 0.5}


@pytest.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Receiver]:
    got = await start_receiver("/v2.1/track", ok_body=ACCEPTED)
    endpoint = got.url.removesuffix("/v2.1/track")
    monkeypatch.setenv("SLUICE_TEST_AI", f"InstrumentationKey={IKEY};IngestionEndpoint={endpoint}")
    yield got
    await got.stop()


def azure(**fields: Any) -> MetricsExportSettings:
    return MetricsExportSettings.model_validate(
        {"protocol": "azure_monitor", "connection_string_env": "SLUICE_TEST_AI", **FAST, **fields}
    )


class Values:
    """A registry with one of each kind, as a service's /metrics has them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sluice_rpc_requests", "RPCs.", ["method", "code"], registry=self.registry
        )
        self.streams = Gauge("sluice_router_streams_in_flight", "Streams.", registry=self.registry)
        self.latency = Histogram(
            "sluice_rpc_duration_seconds", "Latency.", ["method"], registry=self.registry
        )
        self.requests.labels("/r/Complete", "OK").inc(7)
        self.requests.labels("/r/Complete", "UNAVAILABLE").inc(2)
        self.streams.set(3)
        for value in (0.05, 0.5, 0.7, 5.0):
            self.latency.labels("/r/Complete").observe(value)

    def failures(self) -> float | None:
        return self.registry.get_sample_value("sluice_metrics_export_failures_total")


def by_series(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]]:
    """Data points of one POST (schema-validated), by metric name and properties."""
    found = {}
    for envelope in metric_envelopes(body):
        base = envelope["data"]["baseData"]
        (point,) = base["metrics"]
        found[point["name"], tuple(sorted(base["properties"].items()))] = point
    return found


OK = ("sluice_rpc_requests_total", (("code", "OK"), ("method", "/r/Complete")))
UNAVAILABLE = ("sluice_rpc_requests_total", (("code", "UNAVAILABLE"), ("method", "/r/Complete")))
STREAMS = ("sluice_router_streams_in_flight", ())
LATENCY = ("sluice_rpc_duration_seconds", (("method", "/r/Complete"),))


async def test_a_push_is_metric_data_envelopes_of_every_series(receiver: Receiver) -> None:
    values = Values()
    pusher = MetricsPusher(values.registry, "sluice-router", azure())
    assert await pusher.push()
    ((headers, body),) = receiver.requests
    assert headers["Content-Type"] == "application/json"
    envelopes = metric_envelopes(body)
    assert {e["name"] for e in envelopes} == {
        "Microsoft.ApplicationInsights.11111111222233334444555555555555.Metric"
    }
    assert {e["iKey"] for e in envelopes} == {IKEY}
    assert {e["tags"]["ai.cloud.role"] for e in envelopes} == {"sluice-router"}
    points = by_series(body)
    assert points[OK] == {"name": OK[0], "kind": "Measurement", "value": 7.0}
    assert points[UNAVAILABLE]["value"] == 2.0
    assert points[STREAMS] == {"name": STREAMS[0], "kind": "Measurement", "value": 3.0}
    assert points[LATENCY]["kind"] == "Aggregation"
    assert points[LATENCY]["count"] == 4
    assert points[LATENCY]["value"] == pytest.approx(6.25)
    # Buckets and _created samples are not series of their own.
    assert {name for name, _ in points} == {
        "sluice_rpc_requests_total",
        "sluice_router_streams_in_flight",
        "sluice_rpc_duration_seconds",
        "sluice_metrics_export_failures_total",
    }
    await pusher.close()


async def test_counters_send_their_gain_since_the_last_accepted_push(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection string from a file this time (the env var is not read then).
    secret = tmp_path / "connection-string"
    secret.write_text(os.environ["SLUICE_TEST_AI"] + "\n")
    monkeypatch.delenv("SLUICE_TEST_AI")
    values = Values()
    pusher = MetricsPusher(
        values.registry, "sluice-router", azure(connection_string_file=str(secret))
    )
    assert await pusher.push()
    values.requests.labels("/r/Complete", "OK").inc(5)
    values.streams.set(1)
    assert await pusher.push()
    second = by_series(receiver.requests[1][1])
    assert second[OK]["value"] == 5.0
    assert second[UNAVAILABLE]["value"] == 0.0
    assert second[STREAMS]["value"] == 1.0  # a gauge is its current value
    assert LATENCY not in second  # no observation since: nothing to average
    values.latency.labels("/r/Complete").observe(2.0)
    assert await pusher.push()
    third = by_series(receiver.requests[2][1])
    assert (third[LATENCY]["count"], third[LATENCY]["value"]) == (1, pytest.approx(2.0))
    await pusher.close()


async def test_429_and_503_are_retried_within_bounds_honouring_retry_after(
    receiver: Receiver,
) -> None:
    receiver.script = [Reply(429, retry_after="1"), Reply(503)]
    values = Values()
    pusher = MetricsPusher(values.registry, "sluice-x", azure(max_attempts=3))
    began = time.monotonic()
    assert await pusher.push()
    # Retry-After (1 s) is capped by backoff_max_s, so the push is not held for it.
    assert time.monotonic() - began < 0.5
    assert len(receiver.requests) == 3
    assert receiver.requests[0][1] == receiver.requests[2][1]  # the same batch resent
    assert values.failures() == 0
    await pusher.close()


async def test_a_batch_refused_to_the_end_is_dropped_counted_and_its_gain_kept(
    receiver: Receiver,
) -> None:
    receiver.default = Reply(503)
    values = Values()
    pusher = MetricsPusher(values.registry, "sluice-x", azure(max_attempts=3))
    assert not await pusher.push()
    assert len(receiver.requests) == 3
    assert values.failures() == 1
    values.requests.labels("/r/Complete", "OK").inc(1)
    receiver.default = Reply(200, ACCEPTED)
    assert await pusher.push()
    assert by_series(receiver.requests[-1][1])[OK]["value"] == 8.0  # 7 dropped + 1 since
    # A final answer (400) is not retried.
    receiver.default = Reply(400, b'{"errors":[]}')
    before = len(receiver.requests)
    assert not await pusher.push()
    assert len(receiver.requests) == before + 1
    assert values.failures() == 2
    receiver.default = Reply(200, ACCEPTED)
    await pusher.close()


async def test_a_partial_accept_advances_only_the_accepted_series(receiver: Receiver) -> None:
    values = Values()
    pusher = MetricsPusher(values.registry, "sluice-x", azure())
    assert await pusher.push()
    order = list(by_series(receiver.requests[0][1]))
    values.requests.labels("/r/Complete", "OK").inc(1)
    values.requests.labels("/r/Complete", "UNAVAILABLE").inc(1)
    values.latency.labels("/r/Complete").observe(1.0)  # so every series is sent again
    receiver.script = [
        Reply(206, json.dumps({"errors": [{"index": order.index(OK), "statusCode": 400}]}).encode())
    ]
    assert not await pusher.push()  # partly dropped: counted
    assert list(by_series(receiver.requests[1][1])) == order
    assert values.failures() == 1
    assert await pusher.push()
    third = by_series(receiver.requests[2][1])
    assert third[OK]["value"] == 1.0  # rejected before: its gain is sent again
    assert third[UNAVAILABLE]["value"] == 0.0  # accepted before: not sent twice
    await pusher.close()


async def test_a_receiver_down_fails_fast_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("SLUICE_TEST_AI", f"InstrumentationKey={IKEY};IngestionEndpoint={dead}")
    values = Values()
    pusher = MetricsPusher(values.registry, "sluice-x", azure(max_attempts=2))
    began = time.monotonic()
    assert not await pusher.push()
    assert time.monotonic() - began < 1.0
    assert values.failures() == 1
    await pusher.close()  # the final push: one attempt, counted
    assert values.failures() == 2


async def test_a_slow_receiver_times_out_while_serving_goes_on(receiver: Receiver) -> None:
    receiver.default = Reply(200, ACCEPTED, delay_s=5.0)
    values = Values()
    pusher = MetricsPusher(
        values.registry, "sluice-x", azure(timeout_s=0.5, max_attempts=2, interval_s=0.1)
    )
    pusher.start()
    longest_gap, last = 0.0, time.monotonic()
    began = last
    while last - began < 1.5:  # the event loop keeps turning while pushes hang
        await asyncio.sleep(0.01)
        now = time.monotonic()
        longest_gap, last = max(longest_gap, now - last), now
    assert longest_gap < 0.4  # an attempt blocking the loop would stall it for 0.5 s
    assert values.failures() == 1  # 2 attempts of 0.5 s each, then dropped
    began = time.monotonic()
    await pusher.close()
    assert time.monotonic() - began < 1.0  # stopping waits for one attempt at most


def test_azure_monitor_needs_a_connection_string() -> None:
    with pytest.raises(ValidationError, match="connection_string_env or connection_string_file"):
        MetricsExportSettings(protocol="azure_monitor")
    assert not MetricsExportSettings().enabled
    assert MetricsExportSettings(protocol="azure_monitor", connection_string_env="X").enabled


def test_a_missing_connection_string_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_TEST_AI_UNSET", raising=False)
    with pytest.raises(ConfigError, match="metrics_export: environment variable"):
        MetricsPusher(
            CollectorRegistry(),
            "sluice-x",
            MetricsExportSettings(
                protocol="azure_monitor", connection_string_env="SLUICE_TEST_AI_UNSET"
            ),
        )


async def test_a_service_pushes_its_metrics_until_sigterm(receiver: Receiver) -> None:
    """core/grpcx/main.py wires the push into a real service process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    prefix = "SLUICE_TELEMETRY_"
    env |= {
        f"{prefix}SECURITY__MTLS": "false",  # nothing dials it; its push is the subject
        "SLUICE_TEST_AI": os.environ["SLUICE_TEST_AI"],
        f"{prefix}SERVER__PORT": "0",
        f"{prefix}SERVER__METRICS_PORT": "0",
        f"{prefix}METRICS_EXPORT__PROTOCOL": "azure_monitor",
        f"{prefix}METRICS_EXPORT__CONNECTION_STRING_ENV": "SLUICE_TEST_AI",
        f"{prefix}METRICS_EXPORT__INTERVAL_S": "0.2",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice.telemetry", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not receiver.requests:
            assert process.returncode is None and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        envelopes = metric_envelopes(receiver.requests[0][1])
        assert {e["tags"]["ai.cloud.role"] for e in envelopes} == {"sluice-telemetry"}
        names = {e["data"]["baseData"]["metrics"][0]["name"] for e in envelopes}
        assert "sluice_metrics_export_failures_total" in names
        assert len(names) > 5  # the service's own metrics, not just the pusher's
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_a_service_with_no_connection_string_exits_2_naming_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env |= {
        "SLUICE_TELEMETRY_SERVER__PORT": "0",
        "SLUICE_TELEMETRY_SERVER__METRICS_PORT": "0",
        "SLUICE_TELEMETRY_METRICS_EXPORT__PROTOCOL": "azure_monitor",
        "SLUICE_TELEMETRY_METRICS_EXPORT__CONNECTION_STRING_ENV": "SLUICE_TEST_AI_UNSET",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice.telemetry", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"metrics_export: environment variable SLUICE_TEST_AI_UNSET" in err
