"""Admission in front of back-end capacity: priority classes, a weighted-fair queue
across tenants, deadline scheduling, adaptive concurrency and load shedding.

How a request gets to run (on the router's request path, after the limiter admitted it):

1. Shedding: while CPU or memory is past its threshold, classes are refused from the
   bottom: `background` at the first level, `normal` at the second; `premium` and
   `critical` only past the hard level (SERVICE_UNAVAILABLE, retry shortly: docs/errors.md).
2. If the back end has a free slot under its *adaptive* concurrency limit and nobody
   waits, the request starts at once.
3. Otherwise it queues. The highest class waiting goes next; within a class, tenants
   share capacity by start-time fair queueing (weighted; the tenant with the smallest
   start tag goes next, then arrival order). So class wins across tenants and fairness
   decides within a class: a tenant sending 10x more waits behind its own backlog in
   its class, not in front of others, and under overload the lowest class anywhere
   waits, and is refused, first. When the queue is full, an arriving request of a
   higher class takes the place of the lowest-class waiter (which is refused, shed),
   rather than being refused itself.
4. Deadlines: a request whose estimated wait (the work ahead of it divided by the
   limit, times the observed service time) ends after its deadline is refused at once
   with DEADLINE_EXCEEDED; one whose deadline passes while queued is removed and
   refused the same way.
5. The concurrency limit per back end adapts (AIMD on time to first token, fed at each
   stream's first token, not at its end): from `initial_limit` it grows by a step per
   first token within the target while the limit is in use, and a slower one cuts it by
   `decrease_factor` (once per round of admissions); it stays between the floor and a
   ceiling derived from the router's memory budget per stream (docs/runtime.md,
   "Capacity"). So overload shows up as queueing in front of the back end, not as
   timeouts inside it. The resilience bulkhead per back end (core/resilience) stays the
   hard capacity guard behind this.
"""

from sluice.router.admission.aimd import Aimd
from sluice.router.admission.classes import (
    CLASSES,
    PRIORITY_HEADER,
    RANK,
    PriorityClass,
    request_class,
)
from sluice.router.admission.controller import Admission, BackendGate, Ticket
from sluice.router.admission.fair_queue import FairQueue
from sluice.router.admission.load import LatencyWindow, LoadSampler
from sluice.router.admission.metrics import AdmissionMetrics
from sluice.router.settings.admission import (
    AdaptiveSettings,
    AdmissionSettings,
    ScheduleSettings,
    SheddingSettings,
)

__all__ = [
    "CLASSES",
    "PRIORITY_HEADER",
    "RANK",
    "AdaptiveSettings",
    "Admission",
    "AdmissionMetrics",
    "AdmissionSettings",
    "Aimd",
    "BackendGate",
    "FairQueue",
    "LatencyWindow",
    "LoadSampler",
    "PriorityClass",
    "ScheduleSettings",
    "SheddingSettings",
    "Ticket",
    "request_class",
]
