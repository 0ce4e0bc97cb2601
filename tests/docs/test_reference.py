"""The committed reference pages (docs/reference/) match what their sources produce now.

scripts/gen_docs.py writes them from gen/sluice.binpb, the OpenAPI document and the
settings models; a proto comment, route or setting changed without `make docs-gen` fails
here, so the references cannot document a field or route that no longer exists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"
PAGES = (
    "grpc.md",
    "http.md",
    "configuration.md",
    "postman/sluice.postman_collection.json",
    "postman/sluice.postman_environment.json",
    "sluice.apib",
)


def _generate(out: Path) -> None:
    for script, target in (
        ("gen_docs.py", out),
        ("gen_postman.py", out / "postman"),
        ("gen_apib.py", out / "sluice.apib"),
    ):
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / script), str(target)],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )


def test_reference_pages_are_up_to_date(tmp_path: Path) -> None:
    _generate(tmp_path)
    stale = [p for p in PAGES if (tmp_path / p).read_text() != (REFERENCE / p).read_text()]
    assert stale == [], f"docs/reference/{stale} stale: run `make docs-gen` and commit"


def test_every_rpc_field_and_enum_value_is_documented() -> None:
    from google.protobuf import descriptor_pb2

    page = (REFERENCE / "grpc.md").read_text()
    image = descriptor_pb2.FileDescriptorSet.FromString(
        (ROOT / "gen" / "sluice.binpb").read_bytes()
    )
    missing: list[str] = []

    def visit(scope: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{scope}.{message.name}"
        if not message.options.map_entry and f"`{name}`" not in page:
            missing.append(name)
        missing.extend(f"{name}.{f.name}" for f in message.field if f"| `{f.name}` |" not in page)
        for nested in message.nested_type:
            visit(name, nested)
        for enum in message.enum_type:
            missing.extend(f"{name}.{v.name}" for v in enum.value if f"`{v.name}`" not in page)

    for file in image.file:
        if not file.package.startswith("sluice."):
            continue
        for service in file.service:
            missing.extend(
                f"{service.name}.{m.name}" for m in service.method if f"| `{m.name}` |" not in page
            )
        for message in file.message_type:
            visit(file.package, message)
        for enum in file.enum_type:
            missing.extend(f"{enum.name}.{v.name}" for v in enum.value if f"`{v.name}`" not in page)
    assert missing == []


def test_every_setting_has_a_row_with_its_environment_variable() -> None:
    page = (REFERENCE / "configuration.md").read_text()
    for variable in (
        "SLUICE_ROUTER_SERVER__PORT",
        "SLUICE_PROVIDER_BACKENDS__SIMULATED__TOKENS_PER_SECOND",
        "SLUICE_ENVOY_RATE_LIMIT__ENABLED",
        "SLUICE_LIMITER_REDIS__URL",
        "SLUICE_TELEMETRY_SAMPLING__KEEP_RATIO",
    ):
        assert f"`{variable}`" in page, variable


def test_every_http_operation_is_documented() -> None:
    from sluice.launcher.openapi import render_openapi

    page = (REFERENCE / "http.md").read_text()
    document = render_openapi(ROOT / "gen" / "sluice.binpb")
    for path, verbs in document["paths"].items():
        for verb in verbs:
            assert f"### `{verb.upper()} {path}`" in page
    assert "/v1/chat/completions" in document["paths"]


def test_every_request_body_property_has_a_description() -> None:
    """The HTTP reference's request tables have no empty description cells: each field of
    each request body (the contract's from proto comments, OpenAI's written beside the
    parser in launcher/openapi.py) says what it does."""
    from sluice.launcher.openapi import render_openapi

    document = render_openapi(ROOT / "gen" / "sluice.binpb")
    missing = []
    for path, verbs in document["paths"].items():
        for verb, operation in verbs.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                schema = media["schema"]
                if "$ref" in schema:
                    name = schema["$ref"].rsplit("/", 1)[1]
                    schema = document["components"]["schemas"][name]
                for field, spec in schema.get("properties", {}).items():
                    if not spec.get("description"):
                        missing.append(f"{verb.upper()} {path}: {field}")
    assert missing == []
