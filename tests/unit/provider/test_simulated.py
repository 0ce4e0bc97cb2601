"""The simulated model: deterministic text, honest usage, limits and pacing."""

from __future__ import annotations

import pytest

from sluice.common.v1 import common_pb2
from sluice.core.errors import TokenLimitExceededError
from sluice.core.tokens import count_tokens
from sluice.provider.settings import SimulatedBackendSettings
from sluice.provider.simulated import SimulatedBackend
from sluice.provider.v1 import provider_pb2
from tests.support import FakeClock


def backend(clock: FakeClock | None = None, **fields: object) -> SimulatedBackend:
    values: dict[str, object] = {"time_to_first_token_ms": 0, "tokens_per_second": 0}
    values.update(fields)
    return SimulatedBackend("sim", SimulatedBackendSettings(**values), clock)


def stream_request(*contents: str, max_tokens: int = 0) -> provider_pb2.StreamRequest:
    return provider_pb2.StreamRequest(
        backend="sim",
        messages=[common_pb2.Message(role="user", content=c) for c in contents],
        max_tokens=max_tokens,
    )


async def run(
    model: SimulatedBackend, req: provider_pb2.StreamRequest
) -> list[provider_pb2.StreamEvent]:
    return [event async for event in model.stream(req)]


def text_of(events: list[provider_pb2.StreamEvent]) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


def deltas(events: list[provider_pb2.StreamEvent]) -> list[provider_pb2.TokenDelta]:
    return [e.delta for e in events if e.HasField("delta")]


async def test_stream_shape_is_start_deltas_end() -> None:
    events = await run(backend(model="sim-model-7"), stream_request("hello there"))

    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    assert set(kinds[1:-1]) == {"delta"}
    assert events[0].start.backend == "sim"
    assert events[0].start.model == "sim-model-7"


async def test_same_prompt_gives_the_same_text() -> None:
    first = await run(backend(), stream_request("what is a sluice?"))
    again = await run(backend(), stream_request("what is a sluice?"))

    assert text_of(first) == text_of(again)
    assert first == again


async def test_different_prompts_give_different_text() -> None:
    prompts = ["what is a sluice?", "what is a lock?", "tell me about canals", "hi"]
    texts = {text_of(await run(backend(), stream_request(p))) for p in prompts}

    assert len(texts) == len(prompts)


async def test_prompt_is_every_message_not_just_the_last() -> None:
    one = await run(backend(), stream_request("system rules", "question"))
    other = await run(backend(), stream_request("other rules", "question"))

    assert text_of(one) != text_of(other)


@pytest.mark.parametrize("prompt", ["hi", "Hello, world! How are you today?", "a b c " * 50])
@pytest.mark.parametrize("tokens_per_second", [0.0, 100_000.0])
async def test_usage_is_honest(prompt: str, tokens_per_second: float) -> None:
    events = await run(
        backend(tokens_per_second=tokens_per_second, min_tick_ms=0.5),
        stream_request(prompt, "and a follow-up."),
    )

    usage = events[-1].end.usage
    streamed = text_of(events)
    assert usage.input_tokens == count_tokens(prompt + "\n" + "and a follow-up.")
    assert usage.output_tokens == count_tokens(streamed)
    assert usage.output_tokens == sum(d.token_count for d in deltas(events))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert not usage.estimated
    assert all(d.token_count == count_tokens(d.text) for d in deltas(events))


async def test_natural_length_is_within_half_either_side_and_stops() -> None:
    model = backend(answer_tokens=20)
    lengths = []
    for index in range(30):
        events = await run(model, stream_request(f"prompt number {index}", max_tokens=1000))
        end = events[-1].end
        lengths.append(end.usage.output_tokens)
        assert end.finish_reason == common_pb2.FINISH_REASON_STOP

    assert all(10 <= n <= 30 for n in lengths)
    assert len(set(lengths)) > 1  # it does vary with the prompt


@pytest.mark.parametrize("max_tokens", [1, 3, 7])
async def test_max_tokens_is_respected_with_finish_length(max_tokens: int) -> None:
    events = await run(backend(answer_tokens=48), stream_request("go", max_tokens=max_tokens))

    end = events[-1].end
    assert end.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert end.usage.output_tokens == max_tokens
    assert count_tokens(text_of(events)) == max_tokens


async def test_truncated_answer_is_a_prefix_of_the_full_answer() -> None:
    full = text_of(await run(backend(), stream_request("same prompt", max_tokens=1000)))
    short = text_of(await run(backend(), stream_request("same prompt", max_tokens=5)))

    assert full.startswith(short)


async def test_prompt_over_the_context_window_is_refused_before_streaming() -> None:
    model = backend(context_window=16)
    prompt = "one two three four five six seven eight nine ten"  # 10 tokens
    stream = model.stream(stream_request(prompt, max_tokens=7))

    with pytest.raises(TokenLimitExceededError) as caught:
        await anext(stream)

    error = caught.value
    assert error.reason == "TOKEN_LIMIT_EXCEEDED"
    assert error.metadata["context_window"] == "16"
    assert "10 tokens" in error.message


async def test_prompt_exactly_filling_the_context_window_is_accepted() -> None:
    model = backend(context_window=16)
    prompt = "one two three four five six seven eight nine ten"

    events = await run(model, stream_request(prompt, max_tokens=6))

    assert events[-1].end.usage.input_tokens + 6 == 16


async def test_no_max_tokens_means_natural_length_within_the_window() -> None:
    model = backend(context_window=16, answer_tokens=40)
    prompt = "seven tokens in this prompt right here"
    long_prompt = " ".join(["word"] * 17)

    events = await run(model, stream_request(prompt))

    usage = events[-1].end.usage
    assert usage.input_tokens == 7
    assert usage.input_tokens + usage.output_tokens <= 16
    with pytest.raises(TokenLimitExceededError):
        await run(model, stream_request(long_prompt))


async def test_zero_rate_sends_the_whole_answer_at_once() -> None:
    events = await run(backend(tokens_per_second=0), stream_request("all at once", max_tokens=30))

    assert len(deltas(events)) == 1
    assert deltas(events)[0].token_count == events[-1].end.usage.output_tokens


async def test_fast_rate_coalesces_tokens_into_few_deltas() -> None:
    # 100k tokens/s with 5 ms ticks: everything due after the first tick travels together.
    events = await run(
        backend(tokens_per_second=100_000, min_tick_ms=5, answer_tokens=40),
        stream_request("fast", max_tokens=40),
    )

    pieces = deltas(events)
    assert pieces[0].token_count == 1  # the first token is due at once
    assert len(pieces) < events[-1].end.usage.output_tokens


async def test_paced_stream_follows_the_clock() -> None:
    clock = FakeClock()
    # 64 tokens/s: advancing 0.125 s makes exactly 8 more tokens due.
    # answer_tokens=48 means at least 24 natural tokens, so max_tokens=20 always applies.
    model = backend(clock, tokens_per_second=64, min_tick_ms=0.5, answer_tokens=48)
    stream = model.stream(stream_request("paced", max_tokens=20))

    assert (await anext(stream)).HasField("start")
    first = await anext(stream)
    assert first.delta.token_count == 1
    counts = [first.delta.token_count]
    while True:
        clock.advance(0.125)
        event = await anext(stream)
        if event.HasField("end"):
            break
        counts.append(event.delta.token_count)

    assert counts == [1, 8, 8, 3]
    assert event.end.usage.output_tokens == 20
    assert event.end.finish_reason == common_pb2.FINISH_REASON_LENGTH


async def test_stop_sequence_ends_the_answer() -> None:
    # The contract (router.proto, provider.proto): stop sequences end the answer when
    # generated, and FINISH_REASON_STOP covers "hit a stop sequence".
    full_events = await run(backend(), stream_request("tell me about gates", max_tokens=200))
    full = text_of(full_events)
    words = full.split(" ")
    stop = " ".join(words[4:6])  # a sequence that first occurs mid-answer
    request = stream_request("tell me about gates", max_tokens=200)
    request.stop.append(stop)

    events = await run(backend(), request)

    text = text_of(events)
    assert stop not in text
    assert full.startswith(text.rstrip())
    assert len(text) <= full.index(stop)
    assert events[-1].end.finish_reason == common_pb2.FINISH_REASON_STOP
    assert events[-1].end.usage.output_tokens == count_tokens(text)
