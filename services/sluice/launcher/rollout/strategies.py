"""The three rollout strategies, each run in the rollout's own thread
(docs/deployment.md):

- rolling: per replica, start the new one (SERVING, smoke request, healthy in Envoy),
  then drain the old one and stop it;
- blue-green: a whole green pool beside blue, a smoke request pinned to it through
  Envoy, all traffic switched, blue kept warm for the rollback window, then drained;
- canary: the candidate takes each step's share of traffic for an analysis window
  whose gates (gates.py) roll it back at the first crossing; then promoted.

Any RollBack (a gate, a failed health check or smoke request, a manual abort) undoes
what was done: traffic back to the stable pool, the candidate drained and stopped, and
for a rolling rollout the replaced replicas started again.
"""

from __future__ import annotations

import logging
import time

from sluice.launcher.parts import Part
from sluice.launcher.rollout.controller import RollBack, Rollouts, _Shutdown
from sluice.launcher.rollout.notify import Decision
from sluice.launcher.settings import SuiteSettings

log = logging.getLogger(__name__)


def _decide(rollouts: Rollouts, decision: str, message: str, reason: str = "") -> None:
    run = rollouts.run
    if run is None:
        return
    share = rollouts.pools.get(run.candidate)
    rollouts.notifier.decide(
        Decision(
            decision,
            run.strategy,
            run.version,
            message,
            reason,
            round(share.share * 100, 2) if share else None,
        )
    )


def _step(rollouts: Rollouts, message: str) -> None:
    candidate = rollouts.candidate_pool()
    rollouts.metrics.steps.labels(
        rollouts.run.strategy if rollouts.run else "", candidate.name
    ).inc()
    _decide(rollouts, "step", message)


def rolling(rollouts: Rollouts, settings: SuiteSettings, key: str, stopped: list[Part]) -> None:
    """Replace the stable pool's replicas one at a time."""
    stable, candidate = rollouts.stable_pool(), rollouts.candidate_pool()
    address = rollouts.start_helpers(candidate, settings)
    old = list(stable.replicas)
    if rollouts.run is not None:
        rollouts.run.steps = len(old)
    for index, replica in enumerate(old, 1):
        rollouts.check_abort()
        if rollouts.run is not None:
            rollouts.run.step = index
        new = rollouts.add_replica(candidate, address, key)
        remaining = len(stable.live()) - 1
        total = len(candidate.replicas) + remaining
        # The new replica takes its share as the old one stops taking new requests.
        replica.draining = True
        rollouts.shift(
            {candidate.name: len(candidate.replicas) / total, stable.name: remaining / total}
        )
        rollouts.drain(stable, replica)
        stopped.append(replica.part)
        rollouts.check_health(candidate)
        _step(rollouts, f"replica {index}/{len(old)}: {new.part.name} replaced {replica.part.name}")
    rollouts.shift({candidate.name: 1.0})
    rollouts.retire(stable)
    rollouts.promoted()
    rollouts.finish("completed")
    _decide(rollouts, "completed", f"every replica runs {candidate.version}")


def blue_green(rollouts: Rollouts, settings: SuiteSettings, key: str) -> None:
    """Switch all traffic to a complete new pool; keep the old one warm for a while."""
    stable, candidate = rollouts.stable_pool(), rollouts.candidate_pool()
    address = rollouts.start_helpers(candidate, settings)
    if rollouts.run is not None:
        rollouts.run.steps = 2
        rollouts.run.step = 1
    rollouts.add_replicas(candidate, address, key, max(1, len(stable.live())))
    rollouts.smoke_through_envoy(candidate, key)
    rollouts.check_abort()
    rollouts.shift({candidate.name: 1.0, stable.name: 0.0})
    window = rollouts.settings.rollback_window_s
    _step(
        rollouts,
        f"all traffic switched to {candidate.name}; {stable.name} stays warm for {window:g} s",
    )
    if rollouts.run is not None:
        rollouts.run.step = 2
    end = time.monotonic() + window
    while (left := end - time.monotonic()) > 0:
        rollouts.set_phase(f"{stable.name} warm for rollback ({left:.0f} s left)")
        rollouts.wait(min(rollouts.settings.analysis_interval_s, left))
        rollouts.check_abort()
        rollouts.check_health(candidate)
        if rollouts.promote_requested():
            break
    rollouts.retire(stable)
    rollouts.promoted()
    rollouts.finish("promoted")
    _decide(rollouts, "promoted", f"{candidate.name} ({candidate.version}) serves all traffic")


def canary(rollouts: Rollouts, settings: SuiteSettings, key: str) -> None:
    """Shift traffic to the candidate step by step, analysing each step."""
    stable, candidate = rollouts.stable_pool(), rollouts.candidate_pool()
    address = rollouts.start_helpers(candidate, settings)
    config = rollouts.settings
    rollouts.add_replicas(candidate, address, key, config.canary_replicas)
    rollouts.smoke_through_envoy(candidate, key)
    steps = config.steps
    if rollouts.run is not None:
        rollouts.run.steps = len(steps)
    promote = False
    for index, percent in enumerate(steps, 1):
        rollouts.check_abort()
        if rollouts.run is not None:
            rollouts.run.step = index
        rollouts.shift({candidate.name: percent / 100, stable.name: 1 - percent / 100})
        rollouts.set_phase(f"step {index}/{len(steps)}: {percent} % to {candidate.name}, analysing")
        promote = rollouts.analyse(config.analysis_window_s)
        gates = ", ".join(g.describe() for g in (rollouts.run.gates if rollouts.run else []))
        _step(rollouts, f"step {index}/{len(steps)} at {percent} % passed: {gates}")
        if promote:
            break
    if not promote and not config.auto_promote:
        rollouts.set_phase("all steps passed; waiting for `sluice rollout promote`")
        rollouts.analyse(0.0, until_promoted=True)
    rollouts.set_phase("promoting")
    rollouts.shift({candidate.name: 1.0, stable.name: 0.0})
    missing = len(stable.live()) - len(candidate.live())
    if missing > 0:
        rollouts.add_replicas(candidate, address, key, missing)
    rollouts.retire(stable)
    rollouts.promoted()
    rollouts.finish("promoted")
    _decide(rollouts, "promoted", f"{candidate.name} ({candidate.version}) serves all traffic")


def _roll_back(rollouts: Rollouts, back: RollBack, stopped: list[Part]) -> None:
    run = rollouts.run
    if run is None:
        return
    rollouts.set_phase(f"rolling back: {back}")
    stable, candidate = rollouts.stable_pool(), rollouts.pools.get(run.candidate)
    # A rolling rollout's replaced replicas come back first, each healthy in Envoy
    # before the next: meanwhile the candidate's admitted replicas keep their share, so
    # the stable pool never holds fewer replicas than it had at the failure.
    problems = [problem for part in stopped if (problem := rollouts.relaunch(stable, part))]
    for problem in problems:
        log.error("rolling back: %s", problem)
    shares = {stable.name: 1.0}
    if candidate is not None:
        shares[candidate.name] = 0.0
    rollouts.shift(shares)
    if candidate is not None:
        rollouts.retire(candidate)
    rollouts.candidate = None
    aborted = back.reason == "manual"
    rollouts.metrics.rollbacks.labels("router", run.version, run.strategy, back.reason).inc()
    rollouts.finish("aborted" if aborted else "rolled_back", back.reason)
    seconds = time.monotonic() - run.started_monotonic
    restarted = ""
    if stopped:
        names = ", ".join(part.name for part in stopped)
        restarted = f"; {names} restarted on the baseline"
        if problems:
            restarted += f" ({'; '.join(problems)})"
    _decide(
        rollouts,
        "aborted" if aborted else "rolled_back",
        f"{back} — traffic back on {stable.name}{restarted}, {seconds:.1f} s after the start",
        back.reason,
    )


def run_strategy(rollouts: Rollouts, strategy: str, settings: SuiteSettings, key: str) -> None:
    """The rollout thread: run one strategy, rolling back on any RollBack."""
    stopped: list[Part] = []
    try:
        try:
            if strategy == "rolling":
                rolling(rollouts, settings, key, stopped)
            elif strategy == "blue-green":
                blue_green(rollouts, settings, key)
            else:
                canary(rollouts, settings, key)
        except RollBack as back:
            _roll_back(rollouts, back, stopped)
        except _Shutdown:
            raise
        except Exception as err:
            log.exception("rollout failed")
            _roll_back(rollouts, RollBack("internal", f"internal error: {err!r}"), stopped)
    except _Shutdown:
        rollouts.finish("failed", "the suite stopped during the rollout")
