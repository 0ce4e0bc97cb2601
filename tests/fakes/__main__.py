"""`python -m tests.fakes openai|anthropic --port 8000 ...`: serve a fake upstream.

Prints ``listening <port>`` on stdout once bound (port 0 picks a free one), then serves
until interrupted. For local development and the load tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.common import FAULTS, FakeBehaviour, FakeServer
from tests.fakes.openai_fake import OpenAIFake


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["openai", "anthropic"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--tokens-per-second", type=float, default=0.0)
    parser.add_argument("--answer-tokens", type=int, default=12)
    parser.add_argument("--fault", choices=sorted(FAULTS))
    parser.add_argument("--api-key", help="require this key (default: accept any)")
    args = parser.parse_args()
    behaviour = FakeBehaviour(
        ttft_ms=args.ttft_ms,
        tokens_per_second=args.tokens_per_second,
        answer_tokens=args.answer_tokens,
        fault=args.fault,
        api_key=args.api_key,
    )
    # A long-running fake must not keep every request body it ever saw.
    behaviour.requests = _Discard()
    behaviour.headers = _Discard()
    fake: FakeServer = OpenAIFake(behaviour) if args.kind == "openai" else AnthropicFake(behaviour)

    async def serve() -> None:
        await fake.start(args.host, args.port)
        print(f"listening {fake.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await fake.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


class _Discard(list):  # type: ignore[type-arg]
    """A list that keeps nothing."""

    def append(self, item: object) -> None:
        return None


if __name__ == "__main__":
    main()
