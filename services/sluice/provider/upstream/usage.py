"""Token usage of one upstream call."""

from __future__ import annotations

from dataclasses import dataclass

from sluice.common.v1 import common_pb2


@dataclass(slots=True)
class UsageCount:
    """Token counts of one upstream call, exact where the back end reported them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    input_exact: bool = False
    output_exact: bool = False
    streamed_output: int = 0
    """Sum of the estimated counts of every delta sent (the fallback for output)."""
    accepted: bool = False
    """The upstream accepted the request (answered 200): from then on it counts."""

    def finish(self) -> common_pb2.Usage:
        """The Usage to report: exact counts where known, else estimates, flagged.
        Nothing before the upstream accepted the request (a refused call costs nothing)."""
        if not self.accepted:
            return common_pb2.Usage()
        output = self.output_tokens if self.output_exact else self.streamed_output
        return common_pb2.Usage(
            input_tokens=self.input_tokens,
            output_tokens=output,
            total_tokens=self.input_tokens + output,
            cached_input_tokens=self.cached_input_tokens,
            estimated=not (self.input_exact and self.output_exact),
        )


def usage_metadata(usage: common_pb2.Usage) -> dict[str, str]:
    """Usage as ErrorInfo metadata, so a failed stream still reports what it consumed."""
    return {
        "usage_input_tokens": str(usage.input_tokens),
        "usage_output_tokens": str(usage.output_tokens),
        "usage_cached_input_tokens": str(usage.cached_input_tokens),
        "usage_estimated": "true" if usage.estimated else "false",
    }
