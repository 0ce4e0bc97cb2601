"""Admission's Prometheus metrics (also the autoscaling signals, docs/observability.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AdmissionMetrics:
    """Queue depth, wait, in-flight, limits, load and p95: also the autoscaling signals."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "sluice_router_queue_depth",
            "Requests waiting for back-end capacity, per back end and class.",
            ["backend", "priority"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "sluice_router_queue_wait_seconds",
            "Time requests waited for back-end capacity, per class.",
            ["priority"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.in_flight = Gauge(
            "sluice_router_admitted_in_flight",
            "Requests holding back-end capacity, per back end.",
            ["backend"],
            registry=registry,
        )
        self.limit = Gauge(
            "sluice_router_concurrency_limit",
            "The adaptive concurrency limit per back end.",
            ["backend"],
            registry=registry,
        )
        self.ceiling = Gauge(
            "sluice_router_concurrency_ceiling",
            "The most the adaptive limit may grow to per back end (the memory budget's "
            "worth of streams, or admission.adaptive.max_limit).",
            ["backend"],
            registry=registry,
        )
        self.refused = Counter(
            "sluice_router_admission_refused",
            "Requests refused by admission, by class and reason (shed, deadline, queue_full).",
            ["priority", "reason"],
            registry=registry,
        )
        self.cpu = Gauge("sluice_router_cpu_load", "Host CPU load (0..1).", registry=registry)
        self.memory = Gauge(
            "sluice_router_memory_load",
            "Memory load: RSS over resilience.memory_limit_mb (above 1 past it), "
            "else host memory in use.",
            registry=registry,
        )
        self.ttft_p95 = Gauge(
            "sluice_router_ttft_p95_seconds",
            "p95 time to first token over the last 512 admitted requests.",
            registry=registry,
        )
