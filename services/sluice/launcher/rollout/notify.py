"""Every rollout decision, told everywhere an operator looks: the supervisor's log, its
/metrics (alert SluiceRolloutFailed in deploy/prometheus/rules/sla.rules.yml reads the
rollbacks), `sluice rollout status`, and a webhook in Alertmanager's receiver format."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from sluice.launcher.parts import say

DECISIONS = ("started", "step", "rolled_back", "promoted", "aborted", "completed")
"""What a rollout decides (the `decision` label)."""


class RolloutMetrics:
    """The rollout's series on the supervisor's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.steps = Counter(
            "sluice_rollout_steps",
            "Rollout steps taken (a canary step passed, a replica replaced, traffic switched).",
            ["strategy", "pool"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "sluice_rollout_rollbacks",
            "Rollouts rolled back, by why (a gate's name, health_check, smoke, manual).",
            ["service", "version", "strategy", "reason"],
            registry=registry,
        )
        self.decisions = Counter(
            "sluice_rollout_decisions",
            "Rollout decisions, by kind (started, step, rolled_back, promoted, aborted, "
            "completed).",
            ["strategy", "decision"],
            registry=registry,
        )
        self.weight = Gauge(
            "sluice_rollout_traffic_weight_percent",
            "Share of unpinned traffic each router pool receives.",
            ["pool"],
            registry=registry,
        )
        self.in_progress = Gauge(
            "sluice_rollout_in_progress",
            "1 while a rollout runs.",
            registry=registry,
        )
        self.gate = Gauge(
            "sluice_rollout_gate_value",
            "Last value of each canary gate, for the candidate and the baseline pool.",
            ["gate", "side"],
            registry=registry,
        )
        self.in_progress.set(0)


@dataclass
class Decision:
    """One decision of a rollout."""

    decision: str
    strategy: str
    version: str
    message: str
    reason: str = ""
    weight_percent: float | None = None
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))


def alertmanager_payload(decision: Decision, external_url: str) -> dict[str, object]:
    """The decision as Alertmanager's webhook receiver gets alerts (version 4): a rollback
    fires at severity page, every other decision is info."""
    severity = "page" if decision.decision == "rolled_back" else "info"
    labels = {
        "alertname": "SluiceRolloutDecision",
        "service": "router",
        "strategy": decision.strategy,
        "version": decision.version,
        "decision": decision.decision,
        "severity": severity,
    }
    if decision.reason:
        labels["reason"] = decision.reason
    annotations = {
        "summary": f"Rollout of router {decision.version} ({decision.strategy}): "
        f"{decision.decision.replace('_', ' ')}",
        "description": decision.message,
        "runbook_url": "docs/deployment.md#rollback-procedure",
    }
    fingerprint = hashlib.sha256(
        json.dumps(labels, sort_keys=True).encode(), usedforsecurity=False
    ).hexdigest()[:16]
    group = {"alertname": "SluiceRolloutDecision", "service": "router"}
    return {
        "version": "4",
        "groupKey": '{}:{alertname="SluiceRolloutDecision",service="router"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "sluice-rollout",
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": decision.at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": external_url,
                "fingerprint": fingerprint,
            }
        ],
    }


class Notifier:
    """Logs, counts and posts decisions; keeps them for `status`."""

    def __init__(
        self, metrics: RolloutMetrics, webhook_url: str | None, timeout_s: float, external_url: str
    ) -> None:
        self.metrics = metrics
        self.webhook_url = webhook_url
        self.timeout_s = timeout_s
        self.external_url = external_url
        self.history: list[Decision] = []
        self.webhook_failures = 0
        self._lock = threading.Lock()

    def decide(self, decision: Decision) -> None:
        """Record one decision everywhere."""
        d = decision
        say(f"rollout {d.strategy} {d.version}: {d.decision}: {d.message}")
        self.metrics.decisions.labels(decision.strategy, decision.decision).inc()
        with self._lock:
            self.history.append(decision)
            del self.history[:-200]
        if self.webhook_url:
            # Never holds the rollout up: a slow receiver only delays its own copy.
            threading.Thread(
                target=self._post,
                args=(self.webhook_url, decision),
                daemon=True,
                name="rollout-webhook",
            ).start()

    def recent(self, limit: int = 50) -> list[dict[str, object]]:
        """The latest decisions, oldest first."""
        with self._lock:
            return [asdict(d) for d in self.history[-limit:]]

    def _post(self, url: str, decision: Decision) -> None:
        body = json.dumps(alertmanager_payload(decision, self.external_url)).encode()
        request = urllib.request.Request(  # noqa: S310 - an operator-configured http(s) URL
            url,
            data=body,
            headers={"content-type": "application/json"},
            method="POST",
        )
        for attempt in range(3):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s):  # noqa: S310  # nosec B310
                    return
            except OSError as err:
                if attempt == 2:
                    with self._lock:
                        self.webhook_failures += 1
                    say(f"rollout webhook {url}: {err}")
                    return
                time.sleep(0.5 * (attempt + 1))
