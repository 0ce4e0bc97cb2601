"""Errors at the edge: Envoy's own replies in the services' JSON error shape, and the
HTTP status the router asks for on a transcoded error (docs/errors.md)."""

from __future__ import annotations

from typing import Any

from sluice.core.errors import (
    DOMAIN,
    DeadlineExceededError,
    InternalError,
    InvalidInputError,
    NetworkFailureError,
    QuotaExceededError,
    ServiceUnavailableError,
    SluiceError,
    UnsupportedOperationError,
)
from sluice.launcher.envoy.grpc_framing import oversized_grpc_reply

_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

# Envoy's own replies, rewritten into the google.rpc.Status JSON shape our services
# produce through the transcoder: {"code": <gRPC code>, "message": ..., "details": [...]},
# with the reason and gRPC code of the error type each HTTP status stands for.
LOCAL_REPLIES: tuple[tuple[int, type[SluiceError]], ...] = (
    (400, InvalidInputError),
    (404, UnsupportedOperationError),
    (405, UnsupportedOperationError),
    (408, DeadlineExceededError),
    (413, InvalidInputError),
    (429, QuotaExceededError),
    (431, InvalidInputError),
    (502, NetworkFailureError),
    (503, ServiceUnavailableError),
    (504, DeadlineExceededError),
)


def _status_body(error: type[SluiceError]) -> dict[str, Any]:
    return {
        "json_format": {
            "code": error.code.value[0],
            "message": "%LOCAL_REPLY_BODY%",
            "details": [{"@type": _ERROR_INFO, "reason": error.reason, "domain": DOMAIN}],
        },
        "json_format_options": {"sort_properties": False},
    }


def _status_is(http: int, op: str = "EQ") -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": op,
                "value": {"default_value": http, "runtime_key": f"sluice.local_reply.{http}"},
            }
        }
    }


def local_reply_config() -> dict[str, Any]:
    """The connection manager's `local_reply_config`: Envoy's replies are plain text
    otherwise (docs/envoy.md, "Transcoding")."""
    mappers = [
        {"filter": _status_is(http), "body_format_override": _status_body(error)}
        for http, error in LOCAL_REPLIES
    ]
    # Successful direct responses (GET /openapi.json) keep their own body.
    passthrough = {
        "filter": _status_is(200),
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }
    # Redirects (GET /docs) are not errors: an empty body, the Location header does the work.
    redirects = {
        "filter": {"and_filter": {"filters": [_status_is(300, "GE"), _status_is(399, "LE")]}},
        "body_format_override": {"text_format_source": {"inline_string": ""}},
    }
    return {
        # First match wins: a gRPC request's 413 before the JSON one.
        "mappers": [passthrough, redirects, oversized_grpc_reply(_status_is(413)), *mappers],
        "body_format": _status_body(InternalError),
    }


# Applies the HTTP status the router put in x-sluice-http-status (docs/errors.md) to a
# transcoded (JSON) error; gRPC and gRPC-Web responses keep their 200 + grpc-status.
# Listed before the transcoder, so on the way out it sees the transcoded response.
_ERROR_STATUS_LUA = """
function envoy_on_response(handle)
  local headers = handle:headers()
  local wanted = headers:get("x-sluice-http-status")
  if wanted == nil then
    return
  end
  headers:remove("x-sluice-http-status")
  local content_type = headers:get("content-type") or ""
  if string.find(content_type, "application/json", 1, true) == 1
      and string.match(wanted, "^[1-5][0-9][0-9]$") then
    headers:replace(":status", wanted)
  end
end
"""


def error_status_filter() -> dict[str, Any]:
    """The Lua filter that applies x-sluice-http-status (see `_ERROR_STATUS_LUA`)."""
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": _ERROR_STATUS_LUA.strip() + "\n"},
        },
    }
