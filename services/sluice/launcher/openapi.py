"""OpenAPI 3.1 for the edge's HTTP surface, generated from the contract.

Every method with a `google.api.http` annotation in gen/sluice.binpb becomes an
operation; its request and response messages (and everything they reference) become
schemas in the proto3 JSON mapping Envoy's transcoder uses (proto field names, enums as
names, 64-bit integers as strings); proto comments become descriptions. A server stream
is documented as `text/event-stream` whose `data:` lines each hold one message. The
OpenAI-compatible routes (router/openai_http.py) and the feedback route
(router/feedback.py) have no proto; they are described here by hand.

Envoy serves the result at `/openapi.json` (launcher/envoy/routes.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

_T = descriptor_pb2.FieldDescriptorProto
_SCALARS: dict[int, dict[str, Any]] = {
    _T.TYPE_DOUBLE: {"type": "number"},
    _T.TYPE_FLOAT: {"type": "number"},
    _T.TYPE_INT64: {"type": "string", "format": "int64"},
    _T.TYPE_UINT64: {"type": "string", "format": "uint64"},
    _T.TYPE_SINT64: {"type": "string", "format": "int64"},
    _T.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    _T.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    _T.TYPE_INT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _T.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    _T.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}
# Statuses the edge can answer with on any operation (docs/errors.md: Envoy's own replies).
_ERROR_STATUSES = {
    "400": "Invalid input (google.rpc.BadRequest lists every bad field).",
    "401": "Missing or unknown API key.",
    "403": "The key may not use this model.",
    "404": "Unknown path or method.",
    "413": "Request body too large.",
    "429": "Rate or quota limit; see retry-after and google.rpc.RetryInfo.",
    "502": "The model back end answered with something that is not an answer.",
    "503": "No healthy back end, or the gateway is shedding load.",
    "504": "Deadline exceeded.",
}
_METHODS = ("get", "put", "post", "delete", "patch")


class _Contract:
    """Messages, enums and comments of a FileDescriptorSet, by full name."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = list(files.file)
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[tuple[str, tuple[int, ...]], str] = {}
        self.paths: dict[str, tuple[str, tuple[int, ...]]] = {}
        for file in self.files:
            for location in file.source_code_info.location:
                text = location.leading_comments.strip()
                if text:
                    self.comments[(file.name, tuple(location.path))] = text
            for index, message in enumerate(file.message_type):
                self._add_message(file, f".{file.package}", message, (4, index))
            for index, enum in enumerate(file.enum_type):
                name = f".{file.package}.{enum.name}"
                self.enums[name] = enum
                self.paths[name] = (file.name, (5, index))

    def _add_message(
        self,
        file: descriptor_pb2.FileDescriptorProto,
        scope: str,
        message: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
    ) -> None:
        name = f"{scope}.{message.name}"
        self.messages[name] = message
        self.paths[name] = (file.name, path)
        for index, nested in enumerate(message.nested_type):
            self._add_message(file, name, nested, (*path, 3, index))
        for index, enum in enumerate(message.enum_type):
            self.enums[f"{name}.{enum.name}"] = enum
            self.paths[f"{name}.{enum.name}"] = (file.name, (*path, 4, index))

    def comment(self, name: str, *suffix: int) -> str:
        file, path = self.paths[name]
        return self.comments.get((file, (*path, *suffix)), "")


def _schema_name(full_name: str) -> str:
    return full_name.lstrip(".")


class _Builder:
    def __init__(self, contract: _Contract) -> None:
        self.contract = contract
        self.schemas: dict[str, Any] = {}

    def ref(self, full_name: str) -> dict[str, Any]:
        name = _schema_name(full_name)
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: breaks cycles
            if full_name in self.contract.enums:
                self.schemas[name] = self._enum(full_name)
            else:
                self.schemas[name] = self._message(full_name)
        return {"$ref": f"#/components/schemas/{name}"}

    def _enum(self, full_name: str) -> dict[str, Any]:
        enum = self.contract.enums[full_name]
        schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in enum.value]}
        description = self.contract.comment(full_name)
        if description:
            schema["description"] = description
        return schema

    def _field(self, field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        if field.type in (_T.TYPE_MESSAGE, _T.TYPE_GROUP):
            entry = self.contract.messages.get(field.type_name)
            if entry is not None and entry.options.map_entry:
                value = next(f for f in entry.field if f.name == "value")
                return {"type": "object", "additionalProperties": self._field(value)}
            item = self.ref(field.type_name)
        elif field.type == _T.TYPE_ENUM:
            item = self.ref(field.type_name)
        else:
            item = dict(_SCALARS[field.type])
        if field.label == _T.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item

    def _message(self, full_name: str) -> dict[str, Any]:
        message = self.contract.messages[full_name]
        properties: dict[str, Any] = {}
        for index, field in enumerate(message.field):
            schema = self._field(field)
            description = self.contract.comment(full_name, 2, index)
            if description:
                schema = (
                    {**schema, "description": description}
                    if "$ref" not in schema
                    else {
                        "allOf": [schema],
                        "description": description,
                    }
                )
            properties[field.name] = schema
        result: dict[str, Any] = {"type": "object", "properties": properties}
        description = self.contract.comment(full_name)
        if description:
            result["description"] = description
        return result


def _error_responses(builder: _Builder) -> dict[str, Any]:
    status = builder.ref(".google.rpc.Status")
    return {
        code: {"description": text, "content": {"application/json": {"schema": status}}}
        for code, text in _ERROR_STATUSES.items()
    }


def _operations(builder: _Builder, contract: _Contract) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for file in contract.files:
        for s_index, service in enumerate(file.service):
            for m_index, method in enumerate(service.method):
                rule = method.options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb not in _METHODS:
                    continue
                path = getattr(rule, verb)
                output = builder.ref(method.output_type)
                media = "text/event-stream" if method.server_streaming else "application/json"
                description = contract.comments.get((file.name, (6, s_index, 2, m_index)), "")
                if method.server_streaming:
                    description += (
                        "\n\nServer-Sent Events: each `data:` line holds one JSON message of "
                        "the response schema."
                    )
                operation: dict[str, Any] = {
                    "operationId": f"{service.name}_{method.name}",
                    "summary": description.split("\n", 1)[0],
                    "description": description.strip(),
                    "security": [{"bearer": []}, {"apiKey": []}],
                    "responses": {
                        "200": {"description": "OK", "content": {media: {"schema": output}}},
                        **_error_responses(builder),
                    },
                }
                if rule.body == "*":
                    operation["requestBody"] = {
                        "required": True,
                        "content": {"application/json": {"schema": builder.ref(method.input_type)}},
                    }
                paths.setdefault(path, {})[verb] = operation
    return paths


_OPENAI_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                    },
                },
            ]
        },
        "name": {"type": "string"},
    },
}
_OPENAI_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _openai_operations() -> dict[str, Any]:
    errors = {
        code: {"description": text, "content": {"application/json": {"schema": _OPENAI_ERROR}}}
        for code, text in _ERROR_STATUSES.items()
    }
    # Each field as services/sluice/router/openai_http.py (parse_chat_request) reads it;
    # fields OpenAI defines and this list omits are ignored.
    request = {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {
                "type": "string",
                "description": "A model alias of the gateway's configuration (GET /v1/models).",
            },
            "messages": {
                "type": "array",
                "items": _OPENAI_MESSAGE,
                "description": "The conversation; a `developer` message counts as `system`.",
            },
            "max_tokens": {
                "type": "integer",
                "minimum": 1,
                "description": "Upper bound on the answer's tokens (below 2^31).",
            },
            "max_completion_tokens": {
                "type": "integer",
                "minimum": 1,
                "description": "OpenAI's newer name for `max_tokens`; wins when both are given.",
            },
            "temperature": {"type": "number", "description": "Sampling temperature, passed on."},
            "stop": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                "description": "Sequences that end the answer.",
            },
            "stream": {
                "type": "boolean",
                "description": "`true`: answer as Server-Sent Events of chunks.",
            },
            "stream_options": {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
                "description": "`include_usage: true` adds a last chunk with token usage.",
            },
            "user": {
                "type": "string",
                "description": "The end user's id (first 256 characters kept): traces, "
                "privacy erasure and per-user accounting use it.",
            },
            "n": {
                "type": "integer",
                "enum": [1],
                "description": "Only one choice per request is supported.",
            },
        },
    }
    return {
        "/v1/chat/completions": {
            "post": {
                "operationId": "OpenAI_ChatCompletions",
                "summary": "OpenAI-compatible chat completion (streamed when `stream` is true).",
                "description": (
                    "`stream: true` answers with Server-Sent Events: `chat.completion.chunk` "
                    "objects, then `data: [DONE]`; a failure mid-stream is one "
                    '`data: {"error": ...}` line and no `[DONE]`.'
                ),
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": request}},
                },
                "responses": {
                    "200": {
                        "description": "A chat.completion, or an SSE stream of chunks.",
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **errors,
                },
            }
        }
    }


def _feedback_operation() -> dict[str, Any]:
    """`POST /v1/feedback` as services/sluice/router/feedback.py (parse_feedback) reads it."""
    errors = {
        code: {"description": text, "content": {"application/json": {"schema": _OPENAI_ERROR}}}
        for code, text in _ERROR_STATUSES.items()
        if code in ("400", "401", "404", "413", "429", "503")
    }
    errors["400"]["description"] = (
        "Invalid body (over 16 KiB, not a JSON object, a field missing, of the wrong type or "
        "out of range, an unknown field): `error.param` names the field."
    )
    request = {
        "type": "object",
        "required": ["request_id", "score"],
        "additionalProperties": False,
        "properties": {
            "request_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 64,
                "description": "The `x-request-id` of an answer this key got from the gateway.",
            },
            "score": {
                "type": "integer",
                "minimum": 1,
                "maximum": 5,
                "description": "The rating: 1 worst, 5 best (thumbs up/down: 5 or 1).",
            },
            "comment": {
                "type": "string",
                "maxLength": 2000,
                "description": "Free text; checked, then dropped: never stored or logged.",
            },
        },
    }
    accepted = {
        "type": "object",
        "required": ["request_id", "counted"],
        "properties": {
            "request_id": {"type": "string"},
            "counted": {
                "type": "boolean",
                "description": "Whether the score counts: only once per request, and only "
                "from the key that made it, on the router that answered it, within "
                "`router.feedback.window_s`.",
            },
        },
    }
    return {
        "post": {
            "operationId": "Feedback_Submit",
            "summary": "Score an earlier answer (a canary signal; docs/deployment.md).",
            "description": (
                "Scores an answer this key got (its `x-request-id`) from 1 to 5. A score "
                "counts once per request, only from the key that made it, within "
                "`router.feedback.window_s`; counted scores feed "
                "`sluice_router_feedback_score` per rollout pool, which the optional "
                "`feedback_score` canary gate compares. Errors use OpenAI's error shape."
            ),
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request}},
            },
            "responses": {
                "202": {
                    "description": "Accepted; `counted` says whether the score was counted.",
                    "content": {"application/json": {"schema": accepted}},
                },
                **errors,
            },
        }
    }


def render_openapi(descriptor: Path) -> dict[str, Any]:
    """The OpenAPI document for the edge, from the descriptor image."""
    contract = _Contract(descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes()))
    builder = _Builder(contract)
    paths = _operations(builder, contract)
    openai_paths = _openai_operations()
    # GET /v1/models answers in OpenAI's shape too (`object`, `data`) beside `models`.
    paths.update({p: {**paths.get(p, {}), **ops} for p, ops in openai_paths.items()})
    paths["/v1/feedback"] = _feedback_operation()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice gateway",
            "version": "1.0.0",
            "description": "The HTTP surface of the Sluice edge (Envoy), generated from "
            "the gRPC contract's google.api.http annotations.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


def render_openapi_json(descriptor: Path) -> str:
    """The OpenAPI document as compact JSON text."""
    return json.dumps(render_openapi(descriptor), separators=(",", ":"))
