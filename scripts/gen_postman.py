"""Generate the Postman collection and environment of the edge's HTTP API.

Usage: python scripts/gen_postman.py [OUT_DIR]   (default: docs/reference/postman/)

Every operation of the OpenAPI document the edge serves (sluice.launcher.openapi) becomes
a request with an example body and test scripts that check its status and the shape of
its answer (JSON fields of the response schema, or a Server-Sent Events stream ending in
its final event); the OpenAI-compatible calls (chat, streaming with usage) and the typed
errors (401, 400 with BadRequest) are added by hand, as OpenAI's wire format has no proto.
tests/docs/test_postman.py runs the collection with newman against a live suite, and
tests/docs/test_reference.py fails when the committed files are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sluice.launcher.openapi import render_openapi

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "gen" / "sluice.binpb"
SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
# Example values for request fields, by name; a request body holds the fields of its
# schema that have one (the proto schemas mark nothing required).
EXAMPLES: dict[str, Any] = {
    "model": "default",
    "messages": [{"role": "user", "content": "Tell me about sluices"}],
    "max_tokens": 8,
}


def _script(*lines: str) -> list[dict[str, Any]]:
    return [{"listen": "test", "script": {"type": "text/javascript", "exec": list(lines)}}]


def _request(
    name: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    tests: list[dict[str, Any]],
    *,
    key: str = "{{apiKey}}",
) -> dict[str, Any]:
    headers = [{"key": "authorization", "value": f"Bearer {key}"}]
    request: dict[str, Any] = {
        "method": method.upper(),
        "header": headers,
        "url": {
            "raw": "{{baseUrl}}" + path,
            "host": ["{{baseUrl}}"],
            "path": [p for p in path.split("/") if p],
        },
    }
    if body is not None:
        headers.append({"key": "content-type", "value": "application/json"})
        request["body"] = {"mode": "raw", "raw": json.dumps(body, indent=2)}
    return {"name": name, "event": tests, "request": request}


def _json_tests(fields: list[str]) -> list[dict[str, Any]]:
    return _script(
        "pm.test('status 200', () => pm.response.to.have.status(200));",
        "pm.test('JSON of the response schema', () => {",
        "  const body = pm.response.json();",
        f"  const known = {json.dumps(fields)};",
        "  pm.expect(Object.keys(body).length).to.be.above(0);",
        "  Object.keys(body).forEach((k) => pm.expect(known).to.include(k));",
        "});",
    )


def _sse_tests() -> list[dict[str, Any]]:
    return _script(
        "pm.test('status 200', () => pm.response.to.have.status(200));",
        "pm.test('an event stream ending in one complete event', () => {",
        "  const events = pm.response.text().split('\\n')",
        "    .filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)));",
        "  pm.expect(events[0]).to.have.property('metadata');",
        "  pm.expect(events[events.length - 1]).to.have.property('complete');",
        "  pm.expect(events.filter((e) => e.data).length).to.be.above(0);",
        "});",
    )


def _contract_requests(document: dict[str, Any]) -> list[dict[str, Any]]:
    schemas = document["components"]["schemas"]
    items = []
    for path, verbs in document["paths"].items():
        for verb, operation in verbs.items():
            if operation["operationId"].startswith(("OpenAI_", "Feedback_")):
                continue  # described by hand (openapi.py): their own items below
            body = None
            if "requestBody" in operation:
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                fields = schemas[ref.rsplit("/", 1)[-1]]["properties"]
                body = {name: value for name, value in EXAMPLES.items() if name in fields}
            content = operation["responses"]["200"]["content"]
            if "text/event-stream" in content:
                tests = _sse_tests()
            else:
                ref = content["application/json"]["schema"]["$ref"]
                fields = list(schemas[ref.rsplit("/", 1)[-1]]["properties"])
                if path == "/v1/models":  # also answers in OpenAI's shape (openapi.py)
                    fields += ["object", "data"]
                tests = _json_tests(fields)
            name = f"{operation['operationId']} ({verb.upper()} {path})"
            items.append(_request(name, verb, path, body, tests))
    return items


def _openai_requests() -> list[dict[str, Any]]:
    chat = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return [
        _request(
            "Chat completion",
            "post",
            "/v1/chat/completions",
            chat,
            _script(
                "pm.test('status 200', () => pm.response.to.have.status(200));",
                "pm.test('a chat.completion with usage', () => {",
                "  const body = pm.response.json();",
                "  pm.expect(body.object).to.eql('chat.completion');",
                "  pm.expect(body.choices[0].message.content).to.be.a('string').and.not.empty;",
                "  pm.expect(body.usage.total_tokens).to.be.above(0);",
                "});",
            ),
        ),
        _request(
            "Chat completion, streamed with usage",
            "post",
            "/v1/chat/completions",
            {**chat, "stream": True, "stream_options": {"include_usage": True}},
            _script(
                "pm.test('status 200', () => pm.response.to.have.status(200));",
                "pm.test('chunks, a usage chunk, then [DONE]', () => {",
                "  const lines = pm.response.text().split('\\n')",
                "    .filter((l) => l.startsWith('data: '));",
                "  pm.expect(lines[lines.length - 1]).to.eql('data: [DONE]');",
                "  const chunks = lines.slice(0, -1).map((l) => JSON.parse(l.slice(6)));",
                "  chunks.forEach((c) => pm.expect(c.object).to.eql('chat.completion.chunk'));",
                "  pm.expect(chunks[chunks.length - 1].usage.total_tokens).to.be.above(0);",
                "});",
            ),
        ),
    ]


def _feedback_requests() -> list[dict[str, Any]]:
    # An id this key never got: accepted, not counted (router/feedback.py).
    unknown = {"request_id": "not-a-request-of-this-key", "score": 5}
    return [
        _request(
            "Feedback on an unknown request is accepted, not counted",
            "post",
            "/v1/feedback",
            unknown,
            _script(
                "pm.test('status 202', () => pm.response.to.have.status(202));",
                "pm.test('not counted', () => {",
                "  pm.expect(pm.response.json().counted).to.eql(false);",
                "});",
            ),
        ),
        _request(
            "Feedback with a score out of range is 400",
            "post",
            "/v1/feedback",
            {**unknown, "score": 9},
            _script(
                "pm.test('status 400', () => pm.response.to.have.status(400));",
                "pm.test('names the field', () => {",
                "  pm.expect(pm.response.json().error.param).to.eql('score');",
                "});",
            ),
        ),
    ]


def _error_requests() -> list[dict[str, Any]]:
    return [
        _request(
            "Unknown key is 401 with ErrorInfo",
            "post",
            "/v1/complete",
            {"model": "default", "messages": [{"role": "user", "content": "Hi"}]},
            _script(
                "pm.test('status 401', () => pm.response.to.have.status(401));",
                "pm.test('google.rpc.Status with AUTHORIZATION_ERROR', () => {",
                "  const body = pm.response.json();",
                "  pm.expect(body.code).to.eql(16);",
                "  const info = body.details.find((d) => d['@type'].endsWith('ErrorInfo'));",
                "  pm.expect(info.reason).to.eql('AUTHORIZATION_ERROR');",
                "  pm.expect(info.domain).to.eql('sluice.dev');",
                "});",
            ),
            key="sk-not-a-key",
        ),
        _request(
            "Empty conversation is 400 with BadRequest",
            "post",
            "/v1/complete",
            {"model": "default", "messages": []},
            _script(
                "pm.test('status 400', () => pm.response.to.have.status(400));",
                "pm.test('BadRequest names the field', () => {",
                "  const body = pm.response.json();",
                "  const bad = body.details.find((d) => d['@type'].endsWith('BadRequest'));",
                "  pm.expect(bad.field_violations[0].field).to.eql('messages');",
                "});",
            ),
        ),
        _request(
            "OpenAI route: unknown key is OpenAI's 401",
            "post",
            "/v1/chat/completions",
            {"model": "default", "messages": [{"role": "user", "content": "Hi"}]},
            _script(
                "pm.test('status 401', () => pm.response.to.have.status(401));",
                "pm.test('OpenAI error object', () => {",
                "  pm.expect(pm.response.json().error.type).to.eql('authentication_error');",
                "});",
            ),
            key="sk-not-a-key",
        ),
    ]


def build(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The collection and its environment (baseUrl, apiKey) for the default `make up`."""
    collection = {
        "info": {
            "name": document["info"]["title"],
            "description": "Generated by scripts/gen_postman.py from the edge's OpenAPI "
            "document; do not edit. Run: newman run sluice.postman_collection.json "
            "-e sluice.postman_environment.json",
            "schema": SCHEMA,
        },
        "item": [
            {"name": "Sluice API (from the contract)", "item": _contract_requests(document)},
            {"name": "OpenAI-compatible", "item": _openai_requests()},
            {"name": "Feedback", "item": _feedback_requests()},
            {"name": "Errors", "item": _error_requests()},
        ],
    }
    environment = {
        "name": "Sluice (make up)",
        "values": [
            {"key": "baseUrl", "value": "http://localhost:8080", "enabled": True},
            {"key": "apiKey", "value": "sk-sluice-dev", "enabled": True},
        ],
    }
    return collection, environment


def generate(out_dir: Path) -> list[Path]:
    """Write the collection and environment into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    collection, environment = build(render_openapi(DESCRIPTOR))
    written = []
    for name, data in (
        ("sluice.postman_collection.json", collection),
        ("sluice.postman_environment.json", environment),
    ):
        target = out_dir / name
        target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        written.append(target)
    return written


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "reference" / "postman"
    for path in generate(out_dir):
        print(f"generated {path}")


if __name__ == "__main__":
    main()
