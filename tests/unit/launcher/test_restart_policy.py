"""The restart policy against a plain reference model (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sluice.launcher.restarts import RestartPolicy
from sluice.launcher.settings import SupervisorSettings

SETTINGS = SupervisorSettings(
    backoff_initial_s=0.5, backoff_max_s=4.0, stable_s=10.0, max_restarts=4, restart_window_s=60.0
)


@given(st.lists(st.tuples(st.floats(0.0, 30.0), st.floats(0.0, 30.0)), max_size=40))
def test_policy_matches_the_reference(exits: list[tuple[float, float]]) -> None:
    """Each exit comes `gap` seconds after the last restart, having lived `lived`."""
    policy = RestartPolicy(SETTINGS)
    restarts: list[float] = []
    in_a_row = 0
    now = 0.0
    for gap, lived in exits:
        now += gap
        delay = policy.on_exit(now, lived)
        recent = [t for t in restarts if t >= now - SETTINGS.restart_window_s]
        if len(recent) >= SETTINGS.max_restarts:
            assert delay is None
            assert policy.crash_looping
            return
        in_a_row = 0 if lived >= SETTINGS.stable_s else in_a_row + 1
        expected = min(SETTINGS.backoff_max_s, SETTINGS.backoff_initial_s * 2**in_a_row)
        assert delay is not None
        assert delay == expected
        assert SETTINGS.backoff_initial_s <= delay <= SETTINGS.backoff_max_s
        now += delay
        policy.restarted(now)
        restarts.append(now)
    assert not policy.crash_looping
