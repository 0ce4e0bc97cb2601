"""The router wired to an in-process limiter and provider, over real channels."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from google.rpc import error_details_pb2

from sluice.common.v1 import common_pb2
from sluice.core.tokens import count_tokens
from sluice.limiter.v1 import limiter_pb2
from sluice.router.v1 import router_pb2, router_pb2_grpc
from tests.support import (
    API_KEY,
    AUTH,
    SLOW_BACKEND,
    ServiceStack,
    Suite,
    collect,
    details_of,
    error_info,
    eventually,
    kinds,
    metric,
    rich_status,
    sha256_hex,
    start_suite,
)

PROMPT = "How does a sluice gate keep the canal level?"
GENERATE = "/sluice.router.v1.RouterService/Generate"


def generate_request(
    prompt: str = PROMPT, *, model: str = "default", **fields: object
) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.Message(role="user", content=prompt)],
        **fields,  # type: ignore[arg-type]
    )


def complete_request(prompt: str = PROMPT, **fields: object) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        model="default",
        messages=[common_pb2.Message(role="user", content=prompt)],
        **fields,  # type: ignore[arg-type]
    )


async def generate(
    stub: router_pb2_grpc.RouterServiceStub, request: router_pb2.GenerateRequest, **kwargs: object
) -> list[router_pb2.GenerateEvent]:
    return await collect(stub.Generate(request, metadata=AUTH, **kwargs))


async def failed(awaitable: object) -> grpc.aio.AioRpcError:
    """The error a call ends with (a hang fails after 10 s)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(awaitable, timeout=10)  # type: ignore[arg-type]
    return caught.value


# -- happy path -----------------------------------------------------------------------


async def test_generate_streams_metadata_data_progress_complete(suite: Suite) -> None:
    events = await generate(suite.router_stub, generate_request())

    order = kinds(events)
    assert order[0] == "metadata"
    assert order[-1] == "complete"
    assert order.count("metadata") == 1
    assert order.count("complete") == 1
    assert order.count("data") >= 1
    assert order.count("progress") >= 1
    assert "error" not in order
    first_data = order.index("data")
    assert all(kind in {"data", "progress"} for kind in order[first_data:-1])
    assert [e.sequence for e in events] == list(range(len(events)))

    metadata = events[0].metadata
    assert metadata.model == "default"
    assert metadata.provider == "simulated"
    assert metadata.provider_model == "sluice-sim-1"
    assert metadata.attempt == 1
    assert metadata.fallback_step == common_pb2.FALLBACK_STEP_PRIMARY
    assert re.fullmatch(r"[0-9a-f]{32}", metadata.request_id)
    assert metadata.trace_id == ""  # tracing is off in this suite: no trace to point at

    data = [e.data for e in events if e.HasField("data")]
    text = "".join(d.text for d in data)
    complete = events[-1].complete
    assert complete.fallback_step == common_pb2.FALLBACK_STEP_PRIMARY
    assert complete.finish_reason == common_pb2.FINISH_REASON_STOP
    assert complete.usage.input_tokens == count_tokens(PROMPT)
    assert complete.usage.output_tokens == sum(d.token_count for d in data) == count_tokens(text)
    assert complete.usage.total_tokens == complete.usage.input_tokens + complete.usage.output_tokens
    assert complete.total_ms >= complete.time_to_first_token_ms >= 0

    last_progress = [e.progress for e in events if e.HasField("progress")][-1]
    assert last_progress.output_tokens == complete.usage.output_tokens


async def test_caller_request_id_is_echoed(suite: Suite) -> None:
    call = suite.router_stub.Generate(
        generate_request(), metadata=(*AUTH, ("x-request-id", "req-abc-123"))
    )

    events = await collect(call)

    assert events[0].metadata.request_id == "req-abc-123"


async def test_x_api_key_header_is_accepted(suite: Suite) -> None:
    events = await collect(
        suite.router_stub.Generate(generate_request(), metadata=(("x-api-key", API_KEY),))
    )

    assert kinds(events)[-1] == "complete"


async def test_max_tokens_limits_the_answer(suite: Suite) -> None:
    events = await generate(suite.router_stub, generate_request(max_tokens=3))

    complete = events[-1].complete
    assert complete.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert complete.usage.output_tokens == 3
    assert sum(e.data.token_count for e in events if e.HasField("data")) == 3


async def test_complete_returns_the_text_generate_streams(suite: Suite) -> None:
    events = await generate(suite.router_stub, generate_request(max_tokens=50))

    response = await suite.router_stub.Complete(complete_request(max_tokens=50), metadata=AUTH)

    streamed = "".join(e.data.text for e in events if e.HasField("data"))
    assert streamed
    assert response.text == streamed
    assert response.model == "default"
    assert response.provider == "simulated"
    assert response.fallback_step == common_pb2.FALLBACK_STEP_PRIMARY
    assert response.finish_reason == events[-1].complete.finish_reason
    assert response.usage == events[-1].complete.usage
    assert re.fullmatch(r"[0-9a-f]{32}", response.request_id)
    assert response.request_id != events[0].metadata.request_id


async def test_list_models_lists_default(suite: Suite) -> None:
    response = await suite.router_stub.ListModels(router_pb2.ListModelsRequest(), metadata=AUTH)

    assert [m.id for m in response.models] == ["default"]
    assert list(response.models[0].backends) == ["simulated"]
    assert response.models[0].default_max_tokens == 256


async def test_keys_only_see_and_use_their_models(stack: ServiceStack) -> None:
    suite = await start_suite(
        stack,
        router={
            "api_keys": [{"id": "narrow", "sha256": sha256_hex("sk-narrow"), "models": ["fast"]}],
            "models": {
                "default": {"backends": [{"backend": "simulated"}]},
                "fast": {"backends": [{"backend": "simulated"}], "default_max_tokens": 8},
            },
        },
    )
    narrow = (("x-api-key", "sk-narrow"),)

    listed = await suite.router_stub.ListModels(router_pb2.ListModelsRequest(), metadata=narrow)
    assert [(m.id, m.default_max_tokens) for m in listed.models] == [("fast", 8)]

    err = await failed(collect(suite.router_stub.Generate(generate_request(), metadata=narrow)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "BUSINESS_RULE_VIOLATION"

    fast = await collect(
        suite.router_stub.Generate(generate_request(model="fast"), metadata=narrow)
    )
    assert fast[-1].complete.usage.output_tokens <= 8


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer sk-wrong"),), (("authorization", f"Basic {API_KEY}"),)],
    ids=["no-key", "wrong-key", "basic-scheme"],
)
async def test_missing_or_wrong_key_is_unauthenticated(
    suite: Suite, metadata: tuple[tuple[str, str], ...]
) -> None:
    stub = suite.router_stub
    errors = [
        await failed(collect(stub.Generate(generate_request(), metadata=metadata))),
        await failed(stub.Complete(complete_request(), metadata=metadata)),
        await failed(stub.ListModels(router_pb2.ListModelsRequest(), metadata=metadata)),
    ]

    for err in errors:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        info = error_info(err)
        assert info.reason == "AUTHORIZATION_ERROR"
        assert info.domain == "sluice.dev"


async def test_missing_messages_is_invalid_argument_with_bad_request(suite: Suite) -> None:
    request = router_pb2.GenerateRequest(model="default")

    err = await failed(collect(suite.router_stub.Generate(request, metadata=AUTH)))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).reason == "MISSING_PARAMETER"
    [bad] = details_of(rich_status(err), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["messages"]


async def test_invalid_fields_are_all_named(suite: Suite) -> None:
    request = generate_request(max_tokens=-1, temperature=float("nan"), stop=["s"] * 5)

    err = await failed(suite.router_stub.Complete(complete_request(max_tokens=-1), metadata=AUTH))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    err = await failed(collect(suite.router_stub.Generate(request, metadata=AUTH)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).reason == "VALIDATION_ERROR"
    [bad] = details_of(rich_status(err), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["max_tokens", "temperature", "stop"]


async def test_unknown_model_is_invalid_argument_naming_the_model(suite: Suite) -> None:
    err = await failed(
        collect(suite.router_stub.Generate(generate_request(model="gpt-nope"), metadata=AUTH))
    )

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gpt-nope" in (err.details() or "")
    info = error_info(err)
    assert info.reason == "VALIDATION_ERROR"
    assert info.metadata["model"] == "gpt-nope"
    [bad] = details_of(rich_status(err), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["model"]


async def test_provider_error_details_pass_through(suite: Suite) -> None:
    # max_tokens at the router's limit (32 768) plus the prompt overflows the model's window.
    err = await failed(
        collect(suite.router_stub.Generate(generate_request(max_tokens=32_768), metadata=AUTH))
    )

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err)
    assert info.reason == "TOKEN_LIMIT_EXCEEDED"
    assert info.metadata["model"] == "sluice-sim-1"


async def test_limiter_refusal_reaches_the_client_with_retry_info(stack: ServiceStack) -> None:
    suite = await start_suite(stack, limiter={"per_key": {"capacity": 1, "refill_per_second": 0.5}})
    await generate(suite.router_stub, generate_request())

    err = await failed(collect(suite.router_stub.Generate(generate_request(), metadata=AUTH)))

    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rich_status(err)
    assert error_info(err).reason == "QUOTA_EXCEEDED"
    [quota] = details_of(status, error_details_pb2.QuotaFailure)
    assert quota.violations[0].subject == "api_key:test"
    [retry] = details_of(status, error_details_pb2.RetryInfo)
    assert 0 < retry.retry_delay.ToNanoseconds() <= 2_000_000_000


async def test_provider_down_is_unavailable_network_failure(
    suite: Suite, stack: ServiceStack
) -> None:
    await stack.stop(suite.provider)

    err = await failed(collect(suite.router_stub.Generate(generate_request(), metadata=AUTH)))

    assert err.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(err)
    assert info.reason == "NETWORK_FAILURE"
    assert info.metadata["dependency"] == "provider"
    unary = await failed(suite.router_stub.Complete(complete_request(), metadata=AUTH))
    assert unary.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(unary).reason == "NETWORK_FAILURE"


async def test_limiter_down_fails_open_and_is_counted(suite: Suite, stack: ServiceStack) -> None:
    port = suite.router.metrics_port
    before = await metric(port, "sluice_router_limiter_fail_open_total")
    await stack.stop(suite.limiter)

    events = await generate(suite.router_stub, generate_request())

    assert kinds(events)[-1] == "complete"
    assert await metric(port, "sluice_router_limiter_fail_open_total") == before + 1


async def test_deadline_too_short_is_deadline_exceeded(stack: ServiceStack) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)

    err = await failed(
        collect(suite.router_stub.Generate(generate_request(), metadata=AUTH, timeout=0.3))
    )
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    unary = await failed(suite.router_stub.Complete(complete_request(), metadata=AUTH, timeout=0.3))
    assert unary.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_deadline_already_spent_is_refused_before_work(suite: Suite) -> None:
    err = await failed(
        collect(suite.router_stub.Generate(generate_request(), metadata=AUTH, timeout=0.001))
    )

    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_client_cancel_cancels_the_provider_stream(stack: ServiceStack) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)
    provider_port, router_port = suite.provider.metrics_port, suite.router.metrics_port
    labels = {"backend": "simulated", "outcome": "cancelled"}
    before = await metric(provider_port, "sluice_provider_streams_total", **labels)

    call = suite.router_stub.Generate(generate_request(), metadata=AUTH)
    seen = []
    async for event in call:
        seen.append(event.WhichOneof("event"))
        if seen.count("data") == 2:
            break
    assert await metric(router_port, "sluice_router_streams_in_flight") == 1
    call.cancel()

    async def cancelled() -> float:
        return await metric(provider_port, "sluice_provider_streams_total", **labels)

    assert await eventually(cancelled, lambda n: n > before) == before + 1
    assert await metric(provider_port, "sluice_provider_streams_total", outcome="completed") == 0

    async def in_flight() -> float:
        return await metric(router_port, "sluice_router_streams_in_flight")

    assert await eventually(in_flight, lambda n: n == 0) == 0


async def test_rpc_metrics_count_by_code_and_reason(suite: Suite) -> None:
    await generate(suite.router_stub, generate_request())
    await failed(collect(suite.router_stub.Generate(generate_request())))

    port = suite.router.metrics_port
    assert await metric(port, "sluice_rpc_requests_total", method=GENERATE, code="OK") == 1
    assert (
        await metric(port, "sluice_rpc_requests_total", method=GENERATE, code="UNAUTHENTICATED")
        == 1
    )
    assert await metric(port, "sluice_errors_total", reason="AUTHORIZATION_ERROR") == 1
    assert await metric(port, "sluice_router_time_to_first_token_seconds_count") == 1
    assert await metric(port, "sluice_router_tokens_streamed_total", backend="simulated") > 0


async def test_provider_dying_mid_stream_ends_with_an_error_event(stack: ServiceStack) -> None:
    suite = await start_suite(stack, backend=SLOW_BACKEND)
    call = suite.router_stub.Generate(generate_request(), metadata=AUTH)
    events = []
    async for event in call:
        events.append(event)
        if event.HasField("data"):
            break

    await stack.stop(suite.provider)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with asyncio.timeout(10):
            async for event in call:
                events.append(event)

    order = kinds(events)
    assert order[0] == "metadata"
    assert order[-1] == "error"
    assert order.count("error") == 1
    assert "complete" not in order
    error = events[-1].error
    assert error.grpc_code == caught.value.code().name
    assert caught.value.code() != grpc.StatusCode.OK
    assert error_info(caught.value).reason == error.reason
    assert error.reason in {"NETWORK_FAILURE", "SERVICE_UNAVAILABLE"}
    assert error.usage.estimated
    assert error.usage.output_tokens == sum(
        e.data.token_count for e in events if e.HasField("data")
    )


async def test_token_reservation_is_reconciled_with_real_usage(stack: ServiceStack) -> None:
    token_policy = {
        "name": "key-tokens",
        "scope": "api_key",
        "unit": "tokens",
        "algorithm": "fixed_window",
        "limit": 10_000,
        "window_s": 3600,
    }
    suite = await start_suite(stack, limiter={"policies": [token_policy]})
    events = await generate(suite.router_stub, generate_request(max_tokens=500))
    usage = events[-1].complete.usage
    assert 0 < usage.output_tokens < 500  # the estimate (prompt + 500) over-reserved

    async def remaining_tokens() -> int:
        probe = await suite.limiter_stub.Acquire(
            limiter_pb2.AcquireRequest(api_key_id="test", requests=1, tokens=0)
        )
        [status] = [p for p in probe.policies if p.unit == "tokens"]
        return int(status.remaining)

    # The router settles the reservation after the stream: only real usage stays charged.
    expected = 10_000 - (usage.input_tokens + usage.output_tokens)
    assert await eventually(remaining_tokens, lambda left: left == expected) == expected
