"""Request validation: each problem becomes a named BadRequest field violation."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sluice.common.v1 import common_pb2
from sluice.core.errors import MissingParameterError, SluiceError, ValidationError
from sluice.router.settings import RouterSettings
from sluice.router.v1 import router_pb2
from sluice.router.validation import MAX_STOP_SEQUENCES, validate_request
from tests.support import service_settings


@pytest.fixture(scope="module")
def settings() -> RouterSettings:
    return service_settings(
        RouterSettings, "router", max_tokens_limit=1000, max_messages=3, max_prompt_chars=100
    )


def message(role: str = "user", content: str = "hello") -> common_pb2.Message:
    return common_pb2.Message(role=role, content=content)


def request(**fields: Any) -> router_pb2.GenerateRequest:
    values: dict[str, Any] = {"model": "default", "messages": [message()]}
    values.update(fields)
    return router_pb2.GenerateRequest(**values)


def fields_of(error: SluiceError) -> list[str]:
    return [violation.field for violation in error.field_violations]


def rejected(
    req: router_pb2.GenerateRequest | router_pb2.CompleteRequest, settings: RouterSettings
) -> SluiceError:
    with pytest.raises(SluiceError) as caught:
        validate_request(req, settings)
    return caught.value


@pytest.mark.parametrize(
    "good",
    [
        request(),
        request(max_tokens=0),
        request(max_tokens=1000),
        request(temperature=0.0),
        request(temperature=2.0),
        request(stop=["a"] * MAX_STOP_SEQUENCES),
        request(messages=[message("system", "be brief"), message("user"), message("assistant")]),
        request(messages=[message("tool", "x" * 100)]),
        request(user="u" * 256, session_id="s" * 256),
    ],
    ids=[
        "minimal",
        "max-tokens-default",
        "max-tokens-limit",
        "temp-0",
        "temp-2",
        "stop-4",
        "three-roles",
        "prompt-at-limit",
        "ids-at-limit",
    ],
)
def test_valid_requests_pass(good: router_pb2.GenerateRequest, settings: RouterSettings) -> None:
    validate_request(good, settings)


def test_complete_requests_are_validated_the_same_way(settings: RouterSettings) -> None:
    validate_request(router_pb2.CompleteRequest(model="default", messages=[message()]), settings)

    error = rejected(router_pb2.CompleteRequest(model="default"), settings)
    assert isinstance(error, MissingParameterError)
    assert fields_of(error) == ["messages"]


def test_missing_messages(settings: RouterSettings) -> None:
    error = rejected(request(messages=[]), settings)

    assert isinstance(error, MissingParameterError)
    assert error.reason == "MISSING_PARAMETER"
    assert fields_of(error) == ["messages"]
    assert "messages" in error.message


def test_missing_model(settings: RouterSettings) -> None:
    error = rejected(request(model=""), settings)

    assert isinstance(error, MissingParameterError)
    assert fields_of(error) == ["model"]


def test_empty_message_content_is_missing(settings: RouterSettings) -> None:
    error = rejected(request(messages=[message(), message(content="")]), settings)

    assert isinstance(error, MissingParameterError)
    assert fields_of(error) == ["messages[1].content"]


@pytest.mark.parametrize("role", ["", "User", "robot", "system "])
def test_bad_role(settings: RouterSettings, role: str) -> None:
    error = rejected(request(messages=[message(), message(role=role)]), settings)

    assert type(error) is ValidationError
    assert error.reason == "VALIDATION_ERROR"
    assert fields_of(error) == ["messages[1].role"]


@pytest.mark.parametrize("max_tokens", [-1, -(2**31), 1001, 2**31 - 1])
def test_max_tokens_out_of_range(settings: RouterSettings, max_tokens: int) -> None:
    error = rejected(request(max_tokens=max_tokens), settings)

    assert type(error) is ValidationError
    assert fields_of(error) == ["max_tokens"]
    assert "max_tokens" in error.message


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -math.inf, -0.01, 2.01, 100.0])
def test_temperature_out_of_range(settings: RouterSettings, temperature: float) -> None:
    error = rejected(request(temperature=temperature), settings)

    assert type(error) is ValidationError
    assert fields_of(error) == ["temperature"]


def test_too_many_stop_sequences(settings: RouterSettings) -> None:
    error = rejected(request(stop=["x"] * (MAX_STOP_SEQUENCES + 1)), settings)

    assert type(error) is ValidationError
    assert fields_of(error) == ["stop"]


def test_too_many_messages(settings: RouterSettings) -> None:
    error = rejected(request(messages=[message()] * 4), settings)

    assert type(error) is ValidationError
    assert fields_of(error) == ["messages"]


def test_prompt_too_long(settings: RouterSettings) -> None:
    error = rejected(
        request(messages=[message(content="x" * 60), message(content="y" * 41)]), settings
    )

    assert type(error) is ValidationError
    assert fields_of(error) == ["messages"]


@pytest.mark.parametrize("field", ["user", "session_id"])
def test_overlong_user_or_session(settings: RouterSettings, field: str) -> None:
    error = rejected(request(**{field: "z" * 257}), settings)

    assert fields_of(error) == ["user"]


def test_every_problem_is_reported_at_once(settings: RouterSettings) -> None:
    error = rejected(
        request(
            model="",
            messages=[message(role="robot")],
            max_tokens=-5,
            temperature=math.nan,
            stop=["s"] * 9,
        ),
        settings,
    )

    # A missing field alongside invalid ones makes the whole thing a ValidationError.
    assert type(error) is ValidationError
    assert fields_of(error) == ["model", "messages[0].role", "max_tokens", "temperature", "stop"]
    for field in ("model", "max_tokens", "temperature", "stop"):
        assert field in error.message


# -- tools (issue 16 item 4: a tool the back end cannot take is the client's mistake) ---


def tool(name: str = "lookup", parameters_json: str = "") -> common_pb2.Tool:
    return common_pb2.Tool(name=name, parameters_json=parameters_json)


@pytest.mark.parametrize(
    "parameters_json",
    [
        "not json",
        "[1, 2]",
        '"a string"',
        '{"type": NaN}',
        "[" * 50_000 + "]" * 50_000,
        '{"d": "' + "x" * 70_000 + '"}',
    ],
    ids=["not-json", "array", "string", "nan", "deep", "huge"],
)
def test_tool_parameters_that_are_not_a_bounded_object_are_refused(
    settings: RouterSettings, parameters_json: str
) -> None:
    error = rejected(request(tools=[tool(), tool("other", parameters_json)]), settings)
    assert isinstance(error, ValidationError)
    assert error.code.name == "INVALID_ARGUMENT"
    assert fields_of(error) == ["tools[1].parameters_json"]


def test_tool_names_and_counts_are_bounded(settings: RouterSettings) -> None:
    error = rejected(request(tools=[tool(""), tool("a b"), tool("x" * 65)]), settings)
    assert fields_of(error) == ["tools[0].name", "tools[1].name", "tools[2].name"]
    error = rejected(request(tools=[tool()] * (settings.max_tools + 1)), settings)
    assert fields_of(error) == ["tools"]


def test_good_tools_pass(settings: RouterSettings) -> None:
    schema = '{"type": "object", "properties": {"q": {"type": "string"}}}'
    validate_request(request(tools=[tool("get_weather-2", schema), tool("bare")]), settings)
