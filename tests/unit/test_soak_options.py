"""loadtest/soak.py's options: the trace share it exports reaches the suite's config."""

from __future__ import annotations

import pytest

from loadtest.soak import PORTS, parse, soak_config


def test_sample_ratio_defaults_to_a_tenth_and_reaches_the_config() -> None:
    ports = {name: 20_000 + i for i, name in enumerate(PORTS)}
    assert parse([]).sample_ratio == 0.1
    args = parse(["--sample-ratio", "1"])
    assert soak_config(ports, args.sample_ratio)["tracing"]["sample_ratio"] == 1.0


@pytest.mark.parametrize("ratio", ["0", "-0.5", "1.5", "nan"])
def test_a_sample_ratio_outside_0_to_1_is_refused(ratio: str) -> None:
    with pytest.raises(SystemExit) as refused:
        parse(["--sample-ratio", ratio])
    assert refused.value.code == 2
