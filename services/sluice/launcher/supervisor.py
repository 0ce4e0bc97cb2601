"""Starts the whole suite as child processes, watches it, and stops it cleanly.

Start order: telemetry -> (the limiters' shared store) -> limiters and providers ->
routers -> Envoy, each step waited for (gRPC health SERVING, the store's PING, Envoy
/ready and a healthy router upstream) before the next; replicas of a part start together.
Stop order: router first, so it drains in-flight streams while Envoy and the provider
are still up; then Envoy, provider, limiter, the store and telemetry last, so final
spans land.
Children die with the supervisor (PR_SET_PDEATHSIG), so none is left behind.

Every part (router, limiter, provider replicas, telemetry, Envoy) that exits is
restarted with an exponential backoff; a part that keeps exiting is declared
crash-looping after `supervisor.max_restarts` restarts within the window, reported (log
line, `sluice_launcher_part_crash_looping` on the supervisor's /metrics, alert rule in
deploy/prometheus/rules/runtime.yml) and left stopped while the rest keeps serving. A
part that exits before it is ready at start (a port already taken) is retried the same
way and named with its ports. Envoy keeps one hot-restart identity per suite
(launcher/hot_restart.py); SIGHUP to `sluice up` hot-restarts it. Each part's PID is
written to ``<run_dir>/<part>.pid`` (for operators and chaos runs). docs/runtime.md
describes it for operators.
"""

from __future__ import annotations

import os

# We start our own services and Envoy with fixed argv lists (no shell).
import subprocess  # nosec B404
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import IO

from sluice.core.audit import AdminRecord, AuditLog
from sluice.core.config import SecuritySettings
from sluice.core.grpcx.certs import has_suite_certs, write_suite_certs
from sluice.core.grpcx.tls import OPERATOR, ClientTls, client_tls
from sluice.launcher import store
from sluice.launcher.capacity import capacity_lines
from sluice.launcher.envoy import HTTP_API_CLUSTER
from sluice.launcher.envoy.bootstrap import ADMIN_HOST
from sluice.launcher.hot_restart import EnvoyIdentity
from sluice.launcher.metrics import SupervisorMetrics
from sluice.launcher.parts import (
    HEALTH_SERVICES,
    Part,
    PartExitedError,
    StartupError,
    die_with_parent,
    envoy_argv,
    grpc_serving,
    http_ok,
    port_free,
    say,
    service_argv,
    stop_process,
)
from sluice.launcher.replicas import Replica, problems, replicas, target
from sluice.launcher.restarts import RestartPolicy
from sluice.launcher.rollout.control import ControlServer
from sluice.launcher.rollout.controller import Rollouts
from sluice.launcher.settings import SuiteSettings, exposure_problems
from sluice.router.settings import DEV_KEY_SHA256


def mtls_line(security: SecuritySettings) -> str:
    """The banner's line on mutual TLS: where the operator's certificate is, or a warning
    that every internal port trusts any caller (docs/security.md)."""
    if not security.mtls:
        return (
            "  mutual TLS    OFF (security.mtls: false): any local process can call the "
            "internal ports (generate, drain limits, read traces)"
        )
    if security.certs_dir is None:
        return "  mutual TLS    on; certificates from security.ca_path, cert_path, key_path"
    certs = security.certs_dir
    return (
        f"  mutual TLS    on; operator certificate {certs}/operator.pem "
        "(key operator-key.pem, CA ca.pem)"
    )


class Suite:
    """The running suite."""

    def __init__(
        self,
        settings: SuiteSettings,
        *,
        run_dir: Path,
        log_dir: Path | None = None,
        start_envoy: bool | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.start_envoy = settings.envoy.enabled if start_envoy is None else start_envoy
        self.startup_timeout_s = startup_timeout_s
        self.parts: list[Part] = []
        self.security = settings.router.security
        """The suite's shared `security` section, with the generated certificates' directory
        when `sluice up` made them (mtls on, none configured)."""
        self._security_env: dict[str, str] = {}
        self.metrics = SupervisorMetrics()
        self.envoy_identity = EnvoyIdentity(self.run_dir)
        self.retiring: list[subprocess.Popen[bytes]] = []
        """Envoys handing over to a hot-restarted child; they exit on their own."""
        self.rollouts = Rollouts(self)
        """The router pools and their rollouts (launcher/rollout/, docs/deployment.md)."""
        self.control: ControlServer | None = None
        self.store_port: int | None = None
        """Port of the Redis-protocol store started for limiter replicas (None: none)."""

    def _prepare_certificates(self) -> None:
        """Under mtls with no certificates configured, create (once) a local CA and every
        identity's certificate in `<run_dir>/certs` and point each service at them."""
        security = self.security
        if not security.mtls:
            return
        if security.certs_dir is None and security.ca_path is None:
            directory = (self.run_dir / "certs").resolve()
            if not has_suite_certs(directory):
                write_suite_certs(directory)
                print(f"sluice up: created a local CA and certificates in {directory}", flush=True)
                self._audit(AdminRecord("certificates.issued", "sluice up", str(directory)))
            self.security = security.model_copy(update={"certs_dir": directory})
            self._security_env = {
                f"SLUICE_{name.upper()}_SECURITY__CERTS_DIR": str(directory)
                for name in ("router", "limiter", "provider", "telemetry")
            }
            # Envoy's bootstrap is rendered from these settings: its clusters then present
            # the generated `envoy` certificate (launcher/envoy/upstream_tls.py).
            self.settings = replace(
                self.settings,
                router=self.settings.router.model_copy(update={"security": self.security}),
            )

    def _audit(self, record: AdminRecord) -> None:
        """An admin action of the launcher, in `<audit.directory>/launcher.jsonl`."""
        settings = self.settings.router.audit
        if settings.enabled:
            log = AuditLog(settings, "launcher")
            log.admin(record)
            log.close()

    def _probe_tls(self, service: str) -> ClientTls | None:
        """The launcher's health probes present the operator's certificate."""
        return client_tls(
            self.security.model_copy(update={"identity": OPERATOR}), OPERATOR, service
        )

    # -- start -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ) | self._security_env
        if self.settings.config_path is not None:
            env["SLUICE_CONFIG"] = str(self.settings.config_path.resolve())
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, part: Part) -> None:
        stdout: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if part.log is None:
                part.log = (self.log_dir / f"{part.name}.log").open("ab")
            stdout = part.log
        part.process = subprocess.Popen(  # noqa: S603  # nosec B603
            part.argv,
            env=self._env() | part.env,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
            preexec_fn=die_with_parent,  # noqa: PLW1509 - async-signal-safe: one prctl call
        )
        part.started_at = time.monotonic()
        if part not in self.parts:
            self.parts.append(part)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Renamed into place: a reader (operators, chaos runs) never sees it half-written.
        pid_file = self.run_dir / f"{part.name}.pid"
        pid_file.with_suffix(".pid.tmp").write_text(f"{part.process.pid}\n", encoding="utf-8")
        os.replace(pid_file.with_suffix(".pid.tmp"), pid_file)

    def provider_listeners(self) -> list[tuple[int, int]]:
        """(port, metrics_port) of every provider replica, the first being the configured one."""
        return [(r.port, r.metrics_port) for r in replicas(self.settings, "provider")]

    def _wait_until(self, part: Part, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = part.process.poll() if part.process is not None else -1
            if code is not None:
                raise PartExitedError(f"{part.name} exited with status {code} before {what}", code)
            if ready():
                return
            time.sleep(0.05)
        raise StartupError(f"{part.name}: {what} not reached in {self.startup_timeout_s:g} s")

    def _ports_text(self, part: Part) -> str:
        """The part's listeners, each marked when something else holds it."""
        return ", ".join(
            f"{what} {host}:{port}" + ("" if port_free(host, port) else " (in use)")
            for what, host, port in part.ports
        )

    def _add(self, part: Part) -> Part:
        part.policy = RestartPolicy(self.settings.supervisor)
        self.metrics.add(part.name, part.role)
        return part

    def _launch(self, part: Part, what: str, *, spawned: bool = False) -> None:
        """Start a part (unless `spawned` already) and wait until it is ready, retrying a
        failed start with backoff."""
        if not spawned:
            self._add(part)
        while True:
            if not spawned:
                self._spawn(part)
                self.metrics.up.labels(part.name, part.role).set(1)
            spawned = False
            try:
                self._wait_until(part, part.ready, what)
            except PartExitedError as exited:
                now = time.monotonic()
                self.metrics.up.labels(part.name, part.role).set(0)
                self.metrics.exits.labels(part.name, part.role).inc()
                delay = part.policy.on_exit(now, now - part.started_at)
                where = self._ports_text(part)
                if delay is None:
                    self.metrics.crash_looping.labels(part.name, part.role).set(1)
                    raise StartupError(
                        f"{part.name} ({where}) exited with status {exited.code} before "
                        f"{what} {part.restarts + 1} times; giving up"
                    ) from exited
                say(
                    f"{part.name} ({where}) exited with status {exited.code} before {what}; "
                    f"retrying in {delay:g} s (restart {part.policy.tries + 1} of "
                    f"{self.settings.supervisor.max_restarts})"
                )
                time.sleep(delay)
                part.policy.restarted(time.monotonic())
                part.restarts += 1
                self.metrics.restarts.labels(part.name, part.role).inc()
                continue
            return

    def _launch_together(self, parts: list[Part], what: str) -> None:
        """Start parts that do not depend on each other at once (replicas: a suite of
        several starts about as fast as one), then wait for each as `_launch` does."""
        for part in parts:
            self._add(part)
            self._spawn(part)
            self.metrics.up.labels(part.name, part.role).set(1)
        for part in parts:
            self._launch(part, what, spawned=True)

    def start(self) -> None:
        """Start every part in dependency order; raises StartupError (after cleaning up)."""
        exposed = exposure_problems(self.settings)
        if exposed:
            raise StartupError("refusing to expose the edge: " + "; ".join(exposed))
        layout = problems(self.settings)
        if layout:
            raise StartupError("replica listeners: " + "; ".join(layout))
        try:
            self._prepare_certificates()
            supervisor = self.settings.supervisor
            try:
                self.metrics.serve(supervisor.host, supervisor.metrics_port)
            except OSError as err:
                # Reporting must not keep the suite from serving (another suite on the
                # machine may hold the default port): a free port, named in the banner.
                port = self.metrics.serve(supervisor.host, 0)
                say(
                    f"supervisor metrics cannot listen on {supervisor.host}:"
                    f"{supervisor.metrics_port} ({err.strerror}); serving them on port {port}"
                )
            self._start_services()
            if self.start_envoy:
                self._start_envoy()
            self.control = ControlServer(self.rollouts, self.run_dir)
        except BaseException:
            self.stop()
            raise

    def _start_services(self) -> None:
        """Telemetry, the shared store when needed, then every replica of the limiter and
        provider together, then the routers (launcher/replicas.py), each step SERVING
        before the next."""
        telemetry = self.settings.telemetry.server
        self._launch(
            Part(
                "telemetry",
                service_argv("telemetry"),
                telemetry.shutdown_grace_s,
                ready=partial(
                    grpc_serving,
                    f"{telemetry.host}:{telemetry.port}",
                    HEALTH_SERVICES["telemetry"],
                    tls=self._probe_tls("telemetry"),
                ),
                ports=[
                    ("grpc", telemetry.host, telemetry.port),
                    ("metrics", telemetry.host, telemetry.metrics_port),
                ],
            ),
            "SERVING",
        )
        limiters = replicas(self.settings, "limiter")
        limiter_env = self._start_store(len(limiters))
        providers = replicas(self.settings, "provider")
        # Limiters and providers need nothing of each other: they start together.
        self._launch_together(
            [
                *(self._replica_part(replica, limiter_env) for replica in limiters),
                *(self._replica_part(replica, {}) for replica in providers),
            ],
            "SERVING",
        )
        router_env = {}
        # One target naming every replica; the router's channels balance round robin.
        if len(limiters) > 1:
            router_env["SLUICE_ROUTER_LIMITER_ADDRESS"] = target(limiters)
        if len(providers) > 1:
            router_env["SLUICE_ROUTER_PROVIDER_ADDRESS"] = target(providers)
        if self.settings.router.dev_mode:  # `sluice up --dev` (its own file may not say so)
            router_env["SLUICE_ROUTER_DEV_MODE"] = "true"
        routers = [self._replica_part(r, router_env) for r in replicas(self.settings, "router")]
        self._launch_together(routers, "SERVING")

    def _replica_part(self, replica: Replica, env: dict[str, str]) -> Part:
        role = replica.role
        server = getattr(self.settings, role).server
        return Part(
            replica.name,
            service_argv(role),
            server.shutdown_grace_s,
            role=role,
            env=replica.env() | env,
            ready=partial(
                grpc_serving, replica.address, HEALTH_SERVICES[role], tls=self._probe_tls(role)
            ),
            ports=replica.listeners(),
        )

    def _start_store(self, limiters: int) -> dict[str, str]:
        """Start the limiters' shared store when they need one; returns the environment
        that points them at it (launcher/store.py)."""
        settings = self.settings
        if not store.needed(settings, limiters):
            if limiters > 1 and settings.limiter.redis.replicas == 1:
                # A configured store: each limiter's share while it is unreachable.
                return {"SLUICE_LIMITER_REDIS__REPLICAS": str(limiters)}
            return {}
        configured = settings.supervisor.store
        port = configured.port or store.free_port()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        part = Part(
            "store",
            store.argv(store.binary(configured.binary), port, self.run_dir),
            5.0,
            ready=partial(store.pings, port),
            ports=[("redis", store.HOST, port)],
        )
        self._launch(part, "answering PING")
        self.store_port = port
        return store.limiter_env(port, limiters)

    def _envoy_argv(self, identity: list[str]) -> list[str]:
        """Envoy's command line on a freshly rendered config, with its restart identity."""
        # The router clusters' endpoints come from files the rollouts rewrite.
        config_file = self.rollouts.write_envoy_config(self.settings)
        return envoy_argv(self.settings, config_file, identity)

    def _envoy_ready(self) -> bool:
        envoy = self.settings.envoy
        admin = f"http://{ADMIN_HOST}:{envoy.admin_port}"
        # The epoch tells the new Envoy's admin from its parent's during a hot restart.
        epoch = f'"restart_epoch": {self.envoy_identity.epoch},'
        ready = (
            http_ok(f"{admin}/ready")
            and http_ok(f"{admin}/server_info", epoch)
            # Any router replica: after a rollout they are not the configured port's.
            and self.rollouts.envoy_sees_a_healthy_router()
        )
        http_api = self.settings.router.http_api
        if ready and http_api.enabled and len(replicas(self.settings, "router")) > 1:
            # Several routers: the HTTP cluster is health-checked too (envoy/clusters.py);
            # any replica again, not the configured port's.
            return self.rollouts.envoy_sees_a_healthy_router(HTTP_API_CLUSTER)
        return ready

    def _start_envoy(self) -> None:
        envoy = self.settings.envoy
        part = Part(
            "envoy",
            self._envoy_argv(self.envoy_identity.first_start()),
            envoy.drain_time_s + 1,
            ready=self._envoy_ready,
            ports=[("edge", envoy.host, envoy.port), ("admin", ADMIN_HOST, envoy.admin_port)],
        )
        self._launch(part, "ready with a healthy router")

    def part(self, name: str) -> Part | None:
        """The part of that name, if the suite has one."""
        return next((part for part in self.parts if part.name == name), None)

    def hot_restart_envoy(self) -> bool:
        """Replace a running Envoy by a hot restart (same base id, next epoch), so its
        listeners stay open; returns whether the new one took over."""
        part = self.part("envoy")
        if part is None or part.process is None or part.process.poll() is not None:
            say("no running Envoy to hot-restart (a dead one is restarted by itself)")
            return False
        old = part.process
        part.argv = self._envoy_argv(self.envoy_identity.restart(parent_alive=True))
        self._spawn(part)
        self.retiring.append(old)
        try:
            self._wait_until(part, self._envoy_ready, "ready after hot restart")
        except StartupError as err:
            # The old Envoy never handed over, so it keeps serving; the next try starts
            # over from its epoch.
            say(f"hot restart of Envoy failed: {err}; the old one keeps serving")
            if part.process.poll() is None:
                self._stop_part(part)
            self.retiring.remove(old)
            part.process = old
            self.envoy_identity.epoch -= 1
            return False
        say(f"Envoy hot-restarted (epoch {self.envoy_identity.epoch}, pid {part.process.pid})")
        return True

    # -- supervise ---------------------------------------------------------------------

    def supervise(self, now: float | None = None) -> None:
        """Restart parts that exited (with backoff); give up on crash-looping ones."""
        now = time.monotonic() if now is None else now
        self.rollouts.tick()
        self.retiring = [old for old in self.retiring if old.poll() is None]
        for part in self.parts:
            process = part.process
            if process is None or part.crash_looping:
                continue
            if process.poll() is None:
                if part.down_since is not None and part.restart_at is None:
                    self._check_recovered(part, now)
                continue
            if part.restart_at is None:
                self._on_exit(part, process.returncode, now)
            elif now >= part.restart_at:
                part.restart_at = None
                part.policy.restarted(now)
                part.restarts += 1
                self.metrics.restarts.labels(part.name, part.role).inc()
                if part.role == "envoy":
                    # Its parent is dead, so epoch 0 on the same base id (hot_restart.py).
                    part.argv = self._envoy_argv(self.envoy_identity.restart(parent_alive=False))
                self._spawn(part)
                self.metrics.up.labels(part.name, part.role).set(1)

    def _on_exit(self, part: Part, code: int, now: float) -> None:
        if part.down_since is None:
            part.down_since = now
        self.metrics.up.labels(part.name, part.role).set(0)
        self.metrics.exits.labels(part.name, part.role).inc()
        delay = part.policy.on_exit(now, now - part.started_at)
        window = self.settings.supervisor.restart_window_s
        if delay is None:
            self.metrics.crash_looping.labels(part.name, part.role).set(1)
            say(
                f"{part.name} is crash-looping: exited with status {code} after "
                f"{part.policy.tries} restarts within {window:g} s; not restarting it "
                f"({self._ports_text(part)})"
            )
            return
        part.restart_at = now + delay
        say(
            f"{part.name} exited with status {code}; restarting in {delay:g} s "
            f"(restart {part.policy.tries + 1} of {self.settings.supervisor.max_restarts} "
            f"within {window:g} s; {self._ports_text(part)})"
        )

    def _check_recovered(self, part: Part, now: float) -> None:
        if part.down_since is None or not part.ready():
            return
        seconds = now - part.down_since
        part.down_since = None
        self.metrics.recovery.labels(part.name, part.role).set(seconds)
        say(f"{part.name} serves again, {seconds:.2f} s after its exit was seen")

    # -- stop --------------------------------------------------------------------------

    def _stop_part(self, part: Part) -> None:
        process = part.process
        if process is None or process.poll() is not None:
            return
        stop_process(process, part.grace_s)

    def stop(self) -> None:
        """Stop every part: router first (drains streams), telemetry last."""
        if self.control is not None:
            self.control.close()
            self.control = None
        self.rollouts.close()
        order = ["router", "envoy", "provider", "limiter", "store", "telemetry"]
        for role in order:
            for part in self.parts:
                if part.role == role:
                    self._stop_part(part)
            if role == "envoy":
                for old in self.retiring:
                    stop_process(old, self.settings.envoy.drain_time_s + 1)
                self.retiring.clear()
                if self.envoy_identity.started:
                    self.envoy_identity.remove_segment()
        for part in self.parts:
            if part.log is not None:
                part.log.close()
                part.log = None
        self.metrics.close()

    # -- banner ------------------------------------------------------------------------

    def banner(self) -> str:
        """Where everything listens, and the development key when it is configured."""
        s = self.settings
        lines = ["Sluice is up:"]
        if self.start_envoy:
            lines += [
                f"  edge (Envoy)  http://{s.envoy.host}:{s.envoy.port}   "
                "POST /v1/generate (SSE), POST /v1/complete, GET /v1/models, gRPC",
                f"  envoy admin   http://{ADMIN_HOST}:{s.envoy.admin_port}",
            ]
        found = [*replicas(s, "router"), *replicas(s, "limiter"), *replicas(s, "provider")]
        server = s.telemetry.server
        for replica in [
            *found,
            Replica("telemetry", 0, server.host, server.port, server.metrics_port),
        ]:
            host = replica.host
            line = (
                f"  {replica.name:<12}  grpc {host}:{replica.port}   "
                f"metrics http://{host}:{replica.metrics_port}/metrics"
            )
            if replica.http_port is not None:
                line += f"   http http://{replica.http_host}:{replica.http_port}"
            lines.append(line)
        if self.store_port is not None:
            limiters = len(replicas(s, "limiter"))
            lines.append(
                f"  {'shared store':<12}  {store.url(self.store_port)}   (started by sluice up: "
                f"the {limiters} limiter replicas share their counters there)"
            )
        lines += capacity_lines(s)
        lines.append(mtls_line(self.security))
        lines.append(
            f"  {'supervisor':<12}  metrics http://{s.supervisor.host}:{self.metrics.port}/metrics"
            "   (restarts, crash loops, rollouts)"
        )
        if self.control is not None:
            lines.append(
                f"  {'rollouts':<12}  sluice rollout canary|blue-green|rolling --candidate FILE "
                f"--run-dir {self.run_dir}"
            )
        if any(key.sha256 == DEV_KEY_SHA256 for key in s.router.api_keys):
            lines.append(
                "  development key accepted: dev mode   (authorization: Bearer sk-sluice-dev)"
                if s.router.dev_mode
                else "  development key sk-sluice-dev refused: dev mode is off (sluice up --dev)"
            )
        lines.append("Ctrl-C stops everything.")
        return "\n".join(lines)
