"""The vendored Envoy RLS contract: right wire names, and no clash with OTLP's protos.

The `xds-protos` wheel ships old copies of opentelemetry/proto and google/rpc that
overwrite the real packages and break the OTLP exporter (ImportError on
InstrumentationScope). We generate our own RLS stubs instead; these tests keep it so.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from sluice.vendor.envoy.service.ratelimit.v3 import rls_pb2

ROOT = Path(__file__).resolve().parents[3]


def test_service_and_method_have_envoys_wire_names() -> None:
    service = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"]
    assert service.full_name == "envoy.service.ratelimit.v3.RateLimitService"
    assert [m.name for m in service.methods] == ["ShouldRateLimit"]


def test_field_numbers_match_envoys_rls_v3() -> None:
    response = rls_pb2.RateLimitResponse.DESCRIPTOR
    numbers = {f.name: f.number for f in response.fields}
    assert numbers == {
        "overall_code": 1,
        "statuses": 2,
        "response_headers_to_add": 3,
        "request_headers_to_add": 4,
        "raw_body": 5,
    }
    status = {f.name: f.number for f in response.nested_types_by_name["DescriptorStatus"].fields}
    assert status == {
        "code": 1,
        "current_limit": 2,
        "limit_remaining": 3,
        "duration_until_reset": 4,
    }
    limit = {f.name: f.number for f in response.nested_types_by_name["RateLimit"].fields}
    assert limit == {"requests_per_unit": 1, "unit": 2, "name": 3}
    request = {f.name: f.number for f in rls_pb2.RateLimitRequest.DESCRIPTOR.fields}
    assert request == {"domain": 1, "descriptors": 2, "hits_addend": 3}
    assert rls_pb2.RateLimitResponse.OVER_LIMIT == 2


def test_xds_protos_is_not_installed_and_otlp_protos_are_the_real_ones() -> None:
    installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert "xds-protos" not in installed
    owners = [
        d.metadata["Name"]
        for d in metadata.distributions()
        if any(
            str(f).replace("\\", "/") == "opentelemetry/proto/common/v1/common_pb2.py"
            for f in (d.files or [])
        )
    ]
    assert owners == ["opentelemetry-proto"]


def test_otlp_exporter_imports_and_serialises_after_the_rls_stubs() -> None:
    # A fresh interpreter: the limiter (and its RLS stubs) first, then the exporter.
    script = """
import sluice.limiter.service
from sluice.vendor.envoy.service.ratelimit.v3 import rls_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))
with provider.get_tracer("t", "1.0").start_as_current_span("s"):
    pass
request = encode_spans(memory.get_finished_spans())
scope = request.resource_spans[0].scope_spans[0].scope
assert isinstance(scope, InstrumentationScope) and scope.name == "t", scope
assert OTLPSpanExporter is not None and rls_pb2.RateLimitRequest is not None
print("ok", len(request.SerializeToString()))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")
    assert int(result.stdout.split()[1]) > 0
