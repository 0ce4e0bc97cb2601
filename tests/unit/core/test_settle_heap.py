"""The collector tuning every service applies once it has started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sluice.core.grpcx.main import settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    gc.unfreeze()
    settle_heap()

    assert gc.get_freeze_count() > 1000  # modules, descriptors, settings...
    assert gc.get_threshold() == (10_000, 10, 10)
    # Cycles are still found and freed.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
