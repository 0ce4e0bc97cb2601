"""Pure logic of the HTTP back ends: keys, retry hints, error translation, deadlines."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import httpx
import pytest
from pydantic import ValidationError as PydanticValidationError

from sluice.common.v1 import common_pb2
from sluice.core.config import ConfigError
from sluice.core.errors import (
    InvalidInputError,
    RateLimitExceededError,
    ServiceUnavailableError,
    TokenLimitExceededError,
)
from sluice.provider.backends import build_backends
from sluice.provider.genai import GenAIInstruments
from sluice.provider.settings import HttpBackendSettings, ProviderSettings, TimeoutSettings
from sluice.provider.upstream import (
    ApiKey,
    Deadlines,
    Pacer,
    SseDecoder,
    SseEvent,
    UsageCount,
    load_api_key,
    retry_after_s,
    translate_status,
    translate_stream_error,
)
from tests.support import FakeClock

SECRET = "sk-unit-secret-abcdef0123456789"


def backend(**fields: object) -> HttpBackendSettings:
    values: dict[str, object] = {"kind": "openai", "base_url": "http://x/v1", "model": "m"}
    values.update(fields)
    return HttpBackendSettings.model_validate(values)


def body(kind: str = "", code: str = "", message: str = "") -> bytes:
    return json.dumps({"error": {"type": kind, "code": code, "message": message}}).encode()


# -- keys ---------------------------------------------------------------------------------


def test_key_from_env_and_file(tmp_path: Path) -> None:
    key = load_api_key(backend(api_key_env="K"), {"K": f"  {SECRET}\n"})
    assert key is not None and key.reveal() == SECRET
    path = tmp_path / "key"
    path.write_text(SECRET + "\n")
    key = load_api_key(backend(api_key_file=str(path)), {})
    assert key is not None and key.reveal() == SECRET
    assert load_api_key(backend(), {}) is None


def test_missing_key_fails_naming_the_source_not_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="environment variable K is not set"):
        load_api_key(backend(api_key_env="K"), {})
    with pytest.raises(ValueError, match="cannot read API key file"):
        load_api_key(backend(api_key_file=str(tmp_path / "absent")), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        load_api_key(backend(api_key_file=str(tmp_path / "empty")), {})


def test_start_up_fails_when_a_key_is_missing() -> None:
    settings = ProviderSettings.model_validate({"backends": {"oa": backend(api_key_env="NOPE")}})
    instruments = GenAIInstruments(__import__("prometheus_client").CollectorRegistry(), None)
    with pytest.raises(ConfigError, match=r"provider\.backends\.oa: environment variable NOPE"):
        build_backends(settings, instruments=instruments, environ={})


def test_one_key_source_only() -> None:
    with pytest.raises(PydanticValidationError, match="at most one"):
        backend(api_key_env="K", api_key_file="/k")


def test_key_never_prints_and_is_redacted() -> None:
    key = ApiKey(SECRET)
    assert SECRET not in repr(key) and SECRET not in str(key) and SECRET not in f"{key}"
    echoed = f"Incorrect API key provided: {SECRET[:3]}*****{SECRET[-8:]} and {SECRET}"
    redacted = key.redact(echoed)
    assert SECRET not in redacted and SECRET[-8:] not in redacted


def test_kind_selects_the_settings_model() -> None:
    settings = ProviderSettings.model_validate(
        {
            "backends": {
                "sim": {},
                "an": {"kind": "anthropic", "base_url": "https://a/v1", "model": "c"},
            }
        }
    )
    assert settings.backends["sim"].kind == "simulated"
    assert isinstance(settings.backends["an"], HttpBackendSettings)
    with pytest.raises(PydanticValidationError, match="base_url"):
        ProviderSettings.model_validate({"backends": {"x": {"kind": "openai", "model": "m"}}})


def test_model_mapping() -> None:
    settings = backend(models={"fast": "gpt-4o-mini"})
    assert settings.upstream_model("fast") == "gpt-4o-mini"
    assert settings.upstream_model("") == "m"
    assert settings.upstream_model("other") == "other"


# -- retry hints -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, 10.0),
        ({"x-ratelimit-reset-requests": "120ms", "x-ratelimit-reset-tokens": "6m0s"}, 0.12),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5),
        ({"anthropic-ratelimit-requests-reset": "2023-11-14T22:13:40Z"}, 20.0),
        ({"x-ratelimit-reset-tokens": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    clock = FakeClock(wall=1_700_000_000.0)  # 2023-11-14T22:13:20Z
    assert retry_after_s(httpx.Headers(headers), clock) == expected


# -- error translation ------------------------------------------------------------------------


def test_rate_limit_without_hints_still_carries_a_retry_delay() -> None:
    error = translate_status("oa", 429, httpx.Headers(), b"", key=None, clock=FakeClock())
    assert isinstance(error, RateLimitExceededError)
    assert error.retry_after_s == 1.0
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_non_json_error_body_maps_by_status() -> None:
    error = translate_status(
        "oa", 502, httpx.Headers(), b"<html>Bad Gateway</html>", key=None, clock=FakeClock()
    )
    assert isinstance(error, ServiceUnavailableError)
    assert error.metadata == {"backend": "oa", "upstream_status": "502"}


def test_upstream_message_is_redacted_and_bounded() -> None:
    message = f"bad parameter near {SECRET} " + "x" * 1000
    error = translate_status(
        "oa",
        400,
        httpx.Headers(),
        body("invalid_request_error", "", message),
        key=ApiKey(SECRET),
        clock=FakeClock(),
    )
    assert isinstance(error, InvalidInputError)
    assert SECRET not in error.message
    assert len(error.message) < 400


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 8192 tokens. However, you requested 9000",
        "prompt is too long: 210000 tokens > 200000 maximum",
    ],
)
def test_context_length_messages(message: str) -> None:
    error = translate_status(
        "x",
        400,
        httpx.Headers(),
        body("invalid_request_error", "", message),
        key=None,
        clock=FakeClock(),
    )
    assert isinstance(error, TokenLimitExceededError)


def test_in_stream_error_types() -> None:
    clock = FakeClock()
    overloaded = translate_stream_error(
        "an", {"type": "overloaded_error", "message": "Overloaded"}, key=None, clock=clock
    )
    assert isinstance(overloaded, ServiceUnavailableError)
    assert overloaded.metadata["upstream_status"] == "stream"
    limited = translate_stream_error("an", {"type": "rate_limit_error"}, key=None, clock=clock)
    assert isinstance(limited, RateLimitExceededError)
    garbage = translate_stream_error("an", "not an object", key=None, clock=clock)
    assert isinstance(garbage, ServiceUnavailableError)


# -- deadlines, pacing, usage ----------------------------------------------------------------


def test_deadlines_first_token_then_idle_then_total() -> None:
    clock = FakeClock()
    deadlines = Deadlines(TimeoutSettings(first_token_s=10, idle_s=2, total_s=15), clock)
    assert deadlines.next_wait() == (10, "first_token")
    deadlines.first = False
    assert deadlines.next_wait() == (2, "idle")
    clock.advance(14)
    wait, which = deadlines.next_wait()
    assert which == "total" and wait == pytest.approx(1.0)
    clock.advance(5)
    assert deadlines.next_wait() == (0.0, "total")


async def test_pacer_spends_requests_and_tokens() -> None:
    pacer = Pacer(backend(pacing={"requests_per_minute": 2, "tokens_per_minute": 100}).pacing)
    assert pacer.requests is not None and pacer.tokens is not None
    await pacer.acquire(60)
    assert pacer.tokens.has_capacity(35) and not pacer.tokens.has_capacity(45)
    assert pacer.requests.has_capacity()
    await pacer.acquire(1)
    assert not pacer.requests.has_capacity()  # two requests in this minute: the third waits
    assert Pacer(backend().pacing).requests is None


async def test_pacer_caps_a_request_larger_than_the_quota() -> None:
    pacer = Pacer(backend(pacing={"tokens_per_minute": 100}).pacing)
    await pacer.acquire(10_000)  # capped at one minute's quota, not stuck forever
    assert pacer.tokens is not None and not pacer.tokens.has_capacity(5)


def test_usage_exact_only_when_both_counts_reported() -> None:
    usage = UsageCount(input_tokens=7, streamed_output=5, accepted=True)
    assert usage.finish().estimated and usage.finish().output_tokens == 5
    usage.input_exact = True
    usage.output_tokens, usage.output_exact = 6, True
    final = usage.finish()
    assert not final.estimated and final.output_tokens == 6 and final.total_tokens == 13


# -- the event-stream parser ------------------------------------------------------------------


def test_sse_decoder_handles_split_reads_and_line_endings() -> None:
    decoder = SseDecoder()
    assert decoder.feed('event: message_start\ndata: {"a"') == []
    assert decoder.feed(": 1}\n: keep-alive comment\n") == []
    got = decoder.feed("\ndata: first\r\ndata: second\r")
    assert got == [SseEvent("message_start", '{"a": 1}')]
    assert decoder.feed("\n\r\n") == [SseEvent("message", "first\nsecond")]
    assert decoder.feed("data:no-space\n\n\n\n") == [SseEvent("message", "no-space")]
    assert decoder.feed("retry: 10\nid: 7\n\n") == []  # no data: no event


def test_sse_decoder_many_events_in_one_read() -> None:
    text = "".join(f"data: {i}\n\n" for i in range(5)) + "data: [DONE]\n\n"
    assert [e.data for e in SseDecoder().feed(text)] == ["0", "1", "2", "3", "4", "[DONE]"]


def test_a_redirect_is_not_a_result() -> None:
    error = translate_status("oa", 302, httpx.Headers(), b"", key=None, clock=FakeClock())
    assert error.reason == "INVALID_RESPONSE"


def test_nothing_counts_before_the_upstream_accepted() -> None:
    usage = UsageCount(input_tokens=7, streamed_output=0)
    assert usage.finish() == common_pb2.Usage()
    usage.accepted = True
    assert usage.finish().input_tokens == 7
