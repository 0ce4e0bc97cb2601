"""The call context every front builds, and the bookkeeping HTTP handlers share with gRPC."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from sluice.core import headers
from sluice.core.errors import QuotaExceededError
from sluice.core.grpcx.call_context import CallContext, http_metadata
from sluice.core.grpcx.calls import served
from sluice.core.grpcx.request_context import (
    MAX_REQUEST_ID,
    accept_request_id,
    current_request_id,
)
from sluice.core.telemetry.metrics import RpcMetrics

METHOD = "/openai.v1.Chat/Completions"


def test_a_short_printable_request_id_is_kept_and_any_other_replaced() -> None:
    assert accept_request_id([(headers.REQUEST_ID, "req-1")]) == "req-1"
    assert accept_request_id([(headers.REQUEST_ID, b"req-2")]) == "req-2"
    for bad in ("", "x" * (MAX_REQUEST_ID + 1), "a\nb"):
        replaced = accept_request_id([(headers.REQUEST_ID, bad)])
        assert replaced != bad
        assert len(replaced) == 32  # a new random id
    assert len(accept_request_id(None)) == 32


def test_http_metadata_keeps_the_forwarded_headers_lowered() -> None:
    kept = http_metadata(
        [
            ("Authorization", "Bearer k"),
            ("X-Sluice-Fault", "hang=true"),
            ("Cookie", "secret"),
            ("x-sluice-priority", "low"),
        ]
    )
    assert kept == (("authorization", "Bearer k"), ("x-sluice-fault", "hang=true"))


def test_the_deadline_counts_down_and_none_means_no_deadline() -> None:
    assert CallContext().time_remaining() is None
    remaining = CallContext(deadline=time.monotonic() + 5.0).time_remaining()
    assert remaining is not None
    assert 4.0 < remaining <= 5.0


def test_a_context_without_a_transport_reports_no_lag() -> None:
    call = CallContext.of_http({"Authorization": "Bearer k"}, "10.0.0.1")
    assert call.peer == "10.0.0.1"
    assert call.writing_to(None).writer_behind is None


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"service": "router", "method": METHOD, **labels})
    return value or 0.0


def test_served_counts_the_final_code_the_error_reason_and_a_cancel() -> None:
    registry = CollectorRegistry()
    metrics = RpcMetrics("router", registry)
    with served(METHOD, [(headers.REQUEST_ID, "given-id")], metrics, None):
        assert current_request_id() == "given-id"
    assert _sample(registry, "sluice_rpc_requests_total", code="OK") == 1

    with served(METHOD, (), metrics, None) as call:
        call.fail(QuotaExceededError("full"))
    assert _sample(registry, "sluice_rpc_requests_total", code="RESOURCE_EXHAUSTED") == 1
    assert _sample(registry, "sluice_errors_total", reason="QUOTA_EXCEEDED") == 1

    with pytest.raises(ConnectionResetError), served(METHOD, (), metrics, None):
        raise ConnectionResetError
    assert _sample(registry, "sluice_rpc_requests_total", code="CANCELLED") == 1
