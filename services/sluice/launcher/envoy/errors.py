"""Errors at the edge: Envoy's own replies in the services' JSON error shape, and the
HTTP status the router asks for on a transcoded error (docs/errors.md)."""

from __future__ import annotations

from typing import Any

from sluice.launcher.envoy.names import DOMAIN

_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

# Envoy's own replies, rewritten into the google.rpc.Status JSON shape our services
# produce through the transcoder: {"code": <gRPC code>, "message": ..., "details": [...]}.
# (HTTP status, gRPC code, reason)
_LOCAL_REPLIES: tuple[tuple[int, int, str], ...] = (
    (400, 3, "INVALID_INPUT"),
    (404, 12, "UNSUPPORTED_OPERATION"),
    (405, 12, "UNSUPPORTED_OPERATION"),
    (408, 4, "DEADLINE_EXCEEDED"),
    (413, 3, "INVALID_INPUT"),
    (429, 8, "QUOTA_EXCEEDED"),
    (431, 3, "INVALID_INPUT"),
    (502, 14, "NETWORK_FAILURE"),
    (503, 14, "SERVICE_UNAVAILABLE"),
    (504, 4, "DEADLINE_EXCEEDED"),
)


def _status_body(grpc_code: int, reason: str) -> dict[str, Any]:
    return {
        "json_format": {
            "code": grpc_code,
            "message": "%LOCAL_REPLY_BODY%",
            "details": [{"@type": _ERROR_INFO, "reason": reason, "domain": DOMAIN}],
        },
        "json_format_options": {"sort_properties": False},
    }


def _status_is(http: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": http, "runtime_key": f"sluice.local_reply.{http}"},
            }
        }
    }


def local_reply_config() -> dict[str, Any]:
    """The connection manager's `local_reply_config`: Envoy's replies are plain text
    otherwise (docs/envoy.md, "Transcoding")."""
    mappers = [
        {"filter": _status_is(http), "body_format_override": _status_body(code, reason)}
        for http, code, reason in _LOCAL_REPLIES
    ]
    # Successful direct responses (GET /openapi.json) keep their own body.
    passthrough = {
        "filter": _status_is(200),
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }
    return {"mappers": [passthrough, *mappers], "body_format": _status_body(13, "INTERNAL")}


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
