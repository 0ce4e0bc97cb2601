"""What every HTTP back end shares: keys, pacing, timed SSE reading, error translation.

Upstream failures become typed errors (docs/errors.md) here, from each provider's real status codes,
headers and error bodies. Provider keys never leave this module's ``ApiKey``: it does
not print, and every upstream text that reaches an error message is redacted first.
"""

from sluice.provider.upstream.client import (
    UpstreamClient,
    UpstreamRequest,
    json_request,
    server_address,
)
from sluice.provider.upstream.deadlines import Deadlines, send, timeout_error
from sluice.provider.upstream.errors import (
    retry_after_s,
    translate_status,
    translate_stream_error,
    translate_transport,
)
from sluice.provider.upstream.keys import ApiKey, load_api_key
from sluice.provider.upstream.pacing import Pacer
from sluice.provider.upstream.payloads import malformed, parse_json
from sluice.provider.upstream.sse import SseDecoder, SseEvent, timed_batches
from sluice.provider.upstream.usage import UsageCount, usage_metadata

__all__ = [
    "ApiKey",
    "Deadlines",
    "Pacer",
    "SseDecoder",
    "SseEvent",
    "UpstreamClient",
    "UpstreamRequest",
    "UsageCount",
    "json_request",
    "load_api_key",
    "malformed",
    "parse_json",
    "retry_after_s",
    "send",
    "server_address",
    "timed_batches",
    "timeout_error",
    "translate_status",
    "translate_stream_error",
    "translate_transport",
    "usage_metadata",
]
