"""The rollout controller inside `sluice up`: the router pools, Envoy's view of them,
and the mechanics every strategy shares (start a candidate, smoke it, shift traffic,
analyse, drain, roll back). The strategies themselves are in strategies.py.

Processes are forked only on the supervisor's main thread: each child asks the kernel
to be killed when the thread that forked it dies (parts.die_with_parent), so a rollout's
own thread hands every start over to `tick()`, which the supervisor calls each loop.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty, Queue
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import ValidationError

from sluice.core.config import ConfigError, describe_validation_error
from sluice.launcher.envoy import descriptor_path, render
from sluice.launcher.envoy.bootstrap import ADMIN_HOST
from sluice.launcher.envoy.names import HTTP_API_CLUSTER, ROUTER_CLUSTER
from sluice.launcher.envoy.pools import pooled, write_endpoints
from sluice.launcher.parts import stop_process
from sluice.launcher.rollout.gates import Figures, GateResult, evaluate, failed, parse_figures
from sluice.launcher.rollout.notify import Decision, Notifier, RolloutMetrics
from sluice.launcher.rollout.pools import (
    Pool,
    Replica,
    other_colour,
    provider_differs,
    provider_part,
    router_part,
    smoke_direct,
    smoke_pinned,
)
from sluice.launcher.rollout.settings import RolloutSettings
from sluice.launcher.settings import SuiteSettings, load_suite
from sluice.router.settings import DEV_KEY_SHA256

if TYPE_CHECKING:
    from sluice.core.grpcx.tls import ClientTls
    from sluice.launcher.parts import Part
    from sluice.launcher.supervisor import Suite

T = TypeVar("T")
STRATEGIES = ("rolling", "blue-green", "canary")
DEV_KEY = "sk-sluice-dev"


class RolloutError(Exception):
    """A rollout request that cannot be served (bad input, one already running)."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class RollBack(Exception):  # noqa: N818 - a control-flow signal, not an error to report
    """Raised inside a strategy: undo the rollout for `reason`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Shutdown(Exception):  # noqa: N818 - control flow
    """The suite is stopping: leave every process to its stop."""


@dataclass
class Run:
    """One rollout, as `status` shows it."""

    strategy: str
    version: str
    candidate: str
    state: str = "running"
    """running, then completed, promoted, rolled_back, aborted or failed."""
    phase: str = "starting"
    reason: str = ""
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    started_monotonic: float = field(default_factory=time.monotonic)
    finished_at: str | None = None
    seconds: float | None = None
    step: int = 0
    steps: int = 0
    gates: list[GateResult] = field(default_factory=list)
    candidate_requests: float = 0.0
    baseline_requests: float = 0.0
    traffic_since: float | None = None
    """When the candidate first took a share of unpinned traffic (monotonic)."""
    traffic_seconds: float | None = None
    """From then to the end (for a rollback: how long it served, the time to roll back)."""


class Rollouts:
    """The router pools of a suite and the one rollout that may run over them."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.settings = suite.settings.rollout
        self.xds_dir = suite.run_dir / "xds"
        self.metrics = RolloutMetrics(suite.metrics.registry)
        self.notifier = Notifier(
            self.metrics,
            str(self.settings.webhook_url) if self.settings.webhook_url else None,
            self.settings.webhook_timeout_s,
            external_url="sluice-up",
        )
        self.pools: dict[str, Pool] = {}
        self.stable = "blue"
        self.candidate: str | None = None
        self.run: Run | None = None
        self._version = 0
        self._lock = threading.RLock()
        self._calls: Queue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = Queue()
        self._thread: threading.Thread | None = None
        self._abort = threading.Event()
        self._promote = threading.Event()
        self._shutdown = threading.Event()

    # -- Envoy's view --------------------------------------------------------------------

    @property
    def admin(self) -> str:
        """Envoy's admin URL."""
        return f"http://{ADMIN_HOST}:{self.suite.settings.envoy.admin_port}"

    @property
    def edge(self) -> str:
        """The edge's URL."""
        envoy = self.suite.settings.envoy
        return f"http://{envoy.host}:{envoy.port}"

    def _baseline(self) -> None:
        if self.pools:
            return
        replicas = [Replica.of(p) for p in self.suite.parts if p.role == "router"]
        self.pools[self.stable] = Pool(self.stable, "current", 1.0, replicas)

    def publish(self) -> None:
        """Write every pool's replicas to Envoy's endpoints files (atomically)."""
        with self._lock:
            self._baseline()
            self._version += 1
            endpoints = [e for pool in self.pools.values() for e in pool.endpoints()]
            write_endpoints(self.xds_dir, endpoints, self._version)
            for pool in self.pools.values():
                self.metrics.weight.labels(pool.name).set(round(pool.share * 100, 2))

    def write_envoy_config(self, settings: SuiteSettings) -> Path:
        """Envoy's bootstrap with the router clusters fed from the endpoints files, and
        the files for the current pools; returns the bootstrap's path."""
        self.publish()
        bootstrap = pooled(render(settings, descriptor_path()), self.xds_dir)
        header = "# Generated by `sluice up` from the suite's settings. Do not edit.\n"
        path = self.suite.run_dir / "envoy.yaml"
        path.write_text(
            header + yaml.safe_dump(bootstrap, sort_keys=False, width=120), encoding="utf-8"
        )
        return path

    def envoy_hosts(self) -> dict[tuple[str, str], dict[str, str]]:
        """Per (cluster, host:port): Envoy's host stats (/clusters)."""
        found: dict[tuple[str, str], dict[str, str]] = {}
        try:
            with urllib.request.urlopen(f"{self.admin}/clusters", timeout=2) as response:  # noqa: S310  # nosec B310
                text = response.read().decode()
        except OSError:
            return found
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] in (ROUTER_CLUSTER, HTTP_API_CLUSTER):
                found.setdefault((parts[0], parts[1]), {})[parts[2]] = parts[3]
        return found

    def envoy_healthy(self, replica: Replica) -> bool:
        """Whether Envoy's health check passes for the replica."""
        stats = self.envoy_hosts().get((ROUTER_CLUSTER, f"{replica.host}:{replica.grpc_port}"))
        return stats is not None and stats.get("health_flags") == "healthy"

    def envoy_sees_a_healthy_router(self, cluster: str = ROUTER_CLUSTER) -> bool:
        """Whether Envoy has at least one router replica in `cluster` (gRPC, or the HTTP
        API's) passing its health check."""
        return any(
            name == cluster and stats.get("health_flags") == "healthy"
            for (name, _), stats in self.envoy_hosts().items()
        )

    def in_flight(self, replica: Replica) -> int:
        """Requests Envoy has open on the replica (both clusters)."""
        hosts = self.envoy_hosts()
        total = 0
        for cluster, port in (
            (ROUTER_CLUSTER, replica.grpc_port),
            (HTTP_API_CLUSTER, replica.http_port),
        ):
            stats = hosts.get((cluster, f"{replica.host}:{port}"), {})
            with contextlib.suppress(ValueError):
                total += int(stats.get("rq_active", "0"))
        return total

    # -- the main thread's share ---------------------------------------------------------

    def tick(self) -> None:
        """Run what the rollout's thread asked of the main thread (process starts)."""
        while True:
            try:
                call, args, done = self._calls.get_nowait()
            except Empty:
                return
            try:
                done.set_result(call(*args))
            except BaseException as err:
                done.set_exception(err)

    def _in_main(self, call: Callable[..., T], *args: Any) -> T:
        if threading.current_thread() is threading.main_thread():
            return call(*args)
        done: Future[T] = Future()
        self._calls.put((call, args, done))
        while True:
            try:
                return done.result(timeout=0.5)
            except TimeoutError:
                if self._shutdown.is_set():
                    raise _Shutdown from None

    def _start_part(self, part: Part) -> None:
        self.suite._add(part)
        self.suite._spawn(part)
        self.suite.metrics.up.labels(part.name, part.role).set(1)

    def _forget_part(self, part: Part) -> None:
        if part in self.suite.parts:
            self.suite.parts.remove(part)
        self.suite.metrics.up.labels(part.name, part.role).set(0)

    # -- requests from the control endpoint ----------------------------------------------

    def smoke_key(self) -> str:
        """The API key of smoke requests: rollout.smoke_api_key_file's, else the development
        key in dev mode when router.api_keys lists it."""
        path = self.settings.smoke_api_key_file
        if path is not None:
            try:
                return path.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise RolloutError("SMOKE_KEY", f"rollout.smoke_api_key_file: {err}") from err
        router = self.suite.settings.router
        # Outside dev mode every router refuses the development key (router/auth.py), so
        # falling back to it would only fail the first smoke request, after the start.
        if router.dev_mode and any(key.sha256 == DEV_KEY_SHA256 for key in router.api_keys):
            return DEV_KEY
        raise RolloutError(
            "SMOKE_KEY",
            "smoke requests need an API key the routers accept: set "
            "rollout.smoke_api_key_file to a file holding one (a key made with `sluice keys "
            "create`); the development key is accepted only in dev mode",
        )

    def start(
        self,
        strategy: str,
        candidate: str,
        binary: str | None,
        version: str | None,
        overrides: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start a rollout in its own thread (`overrides`: rollout settings for this one
        only, e.g. its steps); returns the status."""
        if strategy not in STRATEGIES:
            raise RolloutError(
                "INVALID_ARGUMENT", f"strategy must be one of {', '.join(STRATEGIES)}"
            )
        if not self.suite.start_envoy:
            raise RolloutError(
                "NO_ENVOY", "rollouts shift traffic in Envoy: start the suite with it"
            )
        config = Path(candidate).resolve()
        try:
            candidate_settings = load_suite(config)
        except (ConfigError, OSError) as err:
            raise RolloutError("INVALID_CANDIDATE", f"candidate {config}: {err}") from err
        program = Path(binary).resolve() if binary else None
        if program is not None and not program.is_file():
            raise RolloutError("INVALID_CANDIDATE", f"candidate binary {program} is not a file")
        try:
            settings = RolloutSettings.model_validate(
                self.suite.settings.rollout.model_dump() | (overrides or {})
            )
        except ValidationError as err:
            raise RolloutError(
                "INVALID_ARGUMENT", describe_validation_error("rollout", err)
            ) from err
        key = self.smoke_key()
        with self._lock:
            if self.run is not None and self.run.state == "running":
                raise RolloutError("ROLLOUT_RUNNING", "a rollout is already running", 409)
            self.settings = settings
            self._baseline()
            name = other_colour(self.stable)
            label = version or config.stem
            self.pools[name] = Pool(name, label, 0.0, config=config, binary=program)
            self.candidate = name
            self.run = Run(strategy, label, name)
            self._abort.clear()
            self._promote.clear()
            self.metrics.in_progress.set(1)
        self.notifier.decide(
            Decision("started", strategy, label, f"candidate {config} as pool {name}")
        )
        from sluice.launcher.rollout.strategies import run_strategy  # noqa: PLC0415 - cycle

        self._thread = threading.Thread(
            target=run_strategy,
            args=(self, strategy, candidate_settings, key),
            daemon=True,
            name=f"rollout-{strategy}",
        )
        self._thread.start()
        return self.status()

    def abort(self) -> dict[str, Any]:
        """Ask the running rollout to roll back."""
        with self._lock:
            if self.run is None or self.run.state != "running":
                raise RolloutError("NO_ROLLOUT", "no rollout is running", 409)
            self._abort.set()
        return self.status()

    def promote(self) -> dict[str, Any]:
        """Ask the running rollout to skip to the end (all traffic to the candidate)."""
        with self._lock:
            if self.run is None or self.run.state != "running":
                raise RolloutError("NO_ROLLOUT", "no rollout is running", 409)
            self._promote.set()
        return self.status()

    def status(self) -> dict[str, Any]:
        """Everything `sluice rollout status` shows."""
        with self._lock:
            run = self.run
            return {
                "state": run.state if run else "idle",
                "strategy": run.strategy if run else None,
                "version": run.version if run else None,
                "phase": run.phase if run else None,
                "reason": run.reason if run else None,
                "started_at": run.started_at if run else None,
                "finished_at": run.finished_at if run else None,
                "seconds": run.seconds if run else None,
                "traffic_seconds": run.traffic_seconds if run else None,
                "step": run.step if run else None,
                "steps": run.steps if run else None,
                "candidate_requests": run.candidate_requests if run else None,
                "baseline_requests": run.baseline_requests if run else None,
                "stable_pool": self.stable,
                "candidate_pool": self.candidate,
                "gates": [
                    {
                        "gate": g.gate,
                        "candidate": g.candidate,
                        "baseline": g.baseline,
                        "limit": g.limit,
                        "passed": g.passed,
                    }
                    for g in (run.gates if run else [])
                ],
                "pools": [pool.describe() for pool in self.pools.values()],
                "decisions": self.notifier.recent(),
                "webhook_failures": self.notifier.webhook_failures,
            }

    def close(self) -> None:
        """The suite stops: end the rollout's thread (its processes stop with the suite)."""
        self._shutdown.set()
        self.tick()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- mechanics the strategies share --------------------------------------------------

    def set_phase(self, phase: str) -> None:
        """What the rollout does now (status)."""
        with self._lock:
            if self.run is not None:
                self.run.phase = phase

    def wait(self, seconds: float) -> None:
        """Sleep, raising on shutdown; abort and promote are checked by the caller."""
        if self._shutdown.wait(seconds):
            raise _Shutdown

    def check_abort(self) -> None:
        """Roll back when the operator asked for it."""
        if self._abort.is_set():
            raise RollBack("manual", "aborted by `sluice rollout abort`")

    def promote_requested(self) -> bool:
        """Whether the operator asked to promote now."""
        return self._promote.is_set()

    def candidate_pool(self) -> Pool:
        """The pool being rolled out."""
        if self.candidate is None:
            raise RollBack("internal", "no candidate pool")
        return self.pools[self.candidate]

    def stable_pool(self) -> Pool:
        """The pool serving before the rollout."""
        return self.pools[self.stable]

    def start_helpers(self, pool: Pool, settings: SuiteSettings) -> str:
        """The provider address the candidate's routers use: its own replicas when its
        provider settings differ from the suite's, else the suite's."""
        suite_settings = self.suite.settings
        baseline = next((p for p in self.suite.parts if p.role == "router"), None)
        address = (baseline.env if baseline else {}).get(
            "SLUICE_ROUTER_PROVIDER_ADDRESS", suite_settings.router.provider_address
        )
        if not provider_differs(suite_settings, settings) or pool.config is None:
            return address
        tls = self.suite._probe_tls("provider")
        targets = []
        for index in range(1, settings.provider.replicas + 1):
            part = provider_part(
                pool.name,
                index=index,
                config=pool.config,
                binary=pool.binary,
                suite=suite_settings,
                tls=tls,
            )
            self.set_phase(f"starting {part.name}")
            self._in_main(self._start_part, part)
            pool.helpers.append(part)
            # Not waited for here: the routers start meanwhile (add_replica waits).
            host, port = part.ports[0][1], part.ports[0][2]
            targets.append(f"{host}:{port}")
        return targets[0] if len(targets) == 1 else "ipv4:" + ",".join(targets)

    def _await_ready(self, part: Part, what: str) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while time.monotonic() < deadline:
            self.check_abort()
            process = part.process
            if process is not None and process.poll() is not None:
                raise RollBack(
                    "health_check", f"{what} {part.name} exited with {process.returncode}"
                )
            if part.ready():
                return
            self.wait(0.1)
        raise RollBack("health_check", f"{what} {part.name} not SERVING within the ready timeout")

    def add_replica(self, pool: Pool, provider_address: str, key: str) -> Replica:
        """Start one router of the pool; SERVING, smoke-tested and healthy in Envoy (with
        no share yet unless the pool has one), or RollBack."""
        return self.add_replicas(pool, provider_address, key, 1)[0]

    def add_replicas(
        self, pool: Pool, provider_address: str, key: str, count: int
    ) -> list[Replica]:
        """Start `count` routers of the pool at once (a start is mostly the interpreter's
        imports: in parallel they take about as long as one), then admit each as
        add_replica does; RollBack at the first that fails."""
        if pool.config is None:
            raise RollBack("internal", f"pool {pool.name} has no configuration file")
        tls = self.suite._probe_tls("router")
        # The suite's limiter target as its own routers have it (every limiter replica).
        baseline = next((p for p in self.suite.parts if p.role == "router"), None)
        limiters = (baseline.env if baseline else {}).get("SLUICE_ROUTER_LIMITER_ADDRESS")
        started: list[Replica] = []
        for _ in range(count):
            index = 1 + max((int(r.part.name.rsplit("-", 1)[1]) for r in pool.replicas), default=0)
            part = router_part(
                pool.name,
                index=index,
                config=pool.config,
                binary=pool.binary,
                suite=self.suite.settings,
                provider_address=provider_address,
                tls=tls,
            )
            if limiters:
                part.env["SLUICE_ROUTER_LIMITER_ADDRESS"] = limiters
            self.set_phase(f"starting {part.name}")
            self._in_main(self._start_part, part)
            replica = Replica.of(part)
            # Not given traffic until admitted: a rollback publishes the pools again (a
            # rolling one while the candidate's admitted replicas still take a share),
            # and a replica may pass Envoy's health check while failing every request.
            replica.draining = True
            with self._lock:
                pool.replicas.append(replica)
            started.append(replica)
        for replica in started:
            self._admit(pool, replica, key, tls)
        return started

    def _admit(self, pool: Pool, replica: Replica, key: str, tls: ClientTls | None) -> None:
        """SERVING, a smoke request straight to it, then healthy in Envoy; or RollBack."""
        part = replica.part
        for helper in pool.helpers:
            self._await_ready(helper, "its provider")
        self._await_ready(part, "router")
        self.set_phase(f"smoke request to {part.name}")
        problem = smoke_direct(replica, key, self.settings.smoke_model, tls)
        if problem is not None:
            raise RollBack("smoke", f"smoke request to {part.name} failed: {problem}")
        with self._lock:
            replica.draining = False
        self.publish()
        self.set_phase(f"waiting for Envoy to see {part.name} healthy")
        if not self._await_envoy_healthy(replica):
            raise RollBack("health_check", f"Envoy never saw {part.name} healthy")

    def _await_envoy_healthy(self, replica: Replica, *, abortable: bool = True) -> bool:
        """Wait (up to the ready timeout) for Envoy's health check to pass for the replica."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while not self.envoy_healthy(replica):
            if abortable:
                self.check_abort()
            if time.monotonic() > deadline or not replica.alive():
                return False
            self.wait(0.1)
        return True

    def smoke_through_envoy(self, pool: Pool, key: str) -> None:
        """A request pinned to the pool through Envoy (skipped when the edge speaks TLS)."""
        if self.suite.settings.envoy.tls.enabled:
            return
        self.set_phase(f"smoke request through Envoy pinned to {pool.name}")
        # Envoy's admin reports a host healthy before every worker thread has the
        # update: a pinned request right after may still find no healthy host.
        for _ in range(10):
            problem = smoke_pinned(self.edge, pool.name, key, self.settings.smoke_model)
            if problem is None or "no healthy upstream" not in problem:
                break
            self.wait(0.3)
        if problem is not None:
            raise RollBack("smoke", f"pinned smoke request to pool {pool.name} failed: {problem}")

    def shift(self, shares: dict[str, float]) -> None:
        """Give each named pool its share of unpinned traffic."""
        with self._lock:
            for name, share in shares.items():
                self.pools[name].share = share
            run = self.run
            if run is not None and run.traffic_since is None and shares.get(run.candidate, 0) > 0:
                run.traffic_since = time.monotonic()
        self.publish()

    def check_health(self, pool: Pool) -> None:
        """RollBack when a replica of the pool died or fails Envoy's health check."""
        hosts = self.envoy_hosts()
        for replica in pool.live():
            if not replica.alive():
                raise RollBack("health_check", f"{replica.part.name} exited")
            stats = hosts.get((ROUTER_CLUSTER, f"{replica.host}:{replica.grpc_port}"), {})
            flags = stats.get("health_flags", "")
            if "failed_active_hc" in flags:
                raise RollBack("health_check", f"{replica.part.name} fails Envoy's health check")

    def figures(self, pool: Pool) -> Figures:
        """The pool's summed router figures now."""
        total = Figures()
        for replica in pool.live():
            try:
                with urllib.request.urlopen(replica.metrics_url, timeout=2) as response:  # noqa: S310  # nosec B310
                    total.add(parse_figures(response.read().decode()))
            except OSError:
                continue
        return total

    def analyse(self, seconds: float, *, until_promoted: bool = False) -> bool:
        """Hold the current shares for `seconds` (and until the candidate answered
        `min_requests`), evaluating the gates every interval: RollBack on a crossing, a
        health failure or an abort. Returns True when the operator asked to promote."""
        candidate, stable = self.candidate_pool(), self.stable_pool()
        start_c, start_b = self.figures(candidate), self.figures(stable)
        began = time.monotonic()
        while True:
            self.wait(self.settings.analysis_interval_s)
            self.check_abort()
            if self.promote_requested():
                return True
            self.check_health(candidate)
            now_c = self.figures(candidate).since(start_c)
            now_b = self.figures(stable).since(start_b)
            results = evaluate(now_c, now_b, self.settings)
            with self._lock:
                if self.run is not None:
                    self.run.gates = results
                    self.run.candidate_requests = now_c.requests
                    self.run.baseline_requests = now_b.requests
            for result in results:
                for side, value in (("candidate", result.candidate), ("baseline", result.baseline)):
                    if value is not None:
                        self.metrics.gate.labels(result.gate, side).set(value)
            enough = now_c.requests >= self.settings.min_requests
            crossed = failed(results)
            if enough and crossed:
                raise RollBack(crossed[0].gate, "; ".join(result.describe() for result in crossed))
            if enough and not until_promoted and time.monotonic() - began >= seconds:
                return False

    def drain(self, pool: Pool, replica: Replica) -> None:
        """No new requests to the replica; let its streams finish (up to the drain
        timeout); stop it; forget it."""
        with self._lock:
            replica.draining = True
        self.publish()
        self.set_phase(f"draining {replica.part.name}")
        deadline = time.monotonic() + self.settings.drain_timeout_s
        # Envoy reads the file within milliseconds; a request routed just before
        # shows in its counters by the next look.
        self.wait(0.3)
        while time.monotonic() < deadline and replica.alive() and self.in_flight(replica) > 0:
            self.wait(0.2)
        self._in_main(self._forget_part, replica.part)
        process = replica.part.process
        if process is not None and process.poll() is None:
            stop_process(process, replica.part.grace_s)
        with self._lock:
            pool.replicas.remove(replica)
        (self.suite.run_dir / f"{replica.part.name}.pid").unlink(missing_ok=True)
        self.publish()

    def retire(self, pool: Pool) -> None:
        """Drain and stop every replica and helper of a pool, then drop it."""
        with self._lock:
            pool.share = 0.0
        for replica in list(pool.replicas):
            self.drain(pool, replica)
        for helper in pool.helpers:
            self._in_main(self._forget_part, helper)
            if helper.process is not None and helper.process.poll() is None:
                stop_process(helper.process, helper.grace_s)
            (self.suite.run_dir / f"{helper.name}.pid").unlink(missing_ok=True)
        with self._lock:
            self.pools.pop(pool.name, None)
        self.publish()

    def relaunch(self, pool: Pool, part: Part) -> str | None:
        """Start a replaced replica again, as it ran before (its command, configuration
        and ports), for a rolling rollback; wait until it is SERVING and healthy in Envoy.
        Returns what went wrong, if it did not come back (the supervisor keeps restarting
        it like any part)."""
        part.process = None
        part.restarts = 0
        self.set_phase(f"rolling back: restarting {part.name} on the baseline")
        self._in_main(self._start_part, part)
        replica = Replica.of(part)
        with self._lock:
            pool.replicas.append(replica)
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while not part.ready():
            if time.monotonic() > deadline:
                return f"{part.name} not SERVING within the ready timeout"
            self.wait(0.1)
        self.publish()
        if not self._await_envoy_healthy(replica, abortable=False):
            return f"Envoy never saw {part.name} healthy"
        return None

    def finish(self, state: str, reason: str = "") -> None:
        """Record how the rollout ended."""
        with self._lock:
            run = self.run
            if run is None:
                return
            run.state = state
            run.reason = reason
            run.phase = "done"
            run.finished_at = datetime.now(UTC).isoformat()
            run.seconds = round(time.monotonic() - run.started_monotonic, 2)
            if run.traffic_since is not None:
                run.traffic_seconds = round(time.monotonic() - run.traffic_since, 2)
            self.metrics.in_progress.set(0)

    def promoted(self) -> None:
        """The candidate pool is the stable one from now on."""
        with self._lock:
            if self.candidate is not None:
                self.stable = self.candidate
            self.candidate = None
