"""The control plane's Prometheus metrics: jobs by phase, dispatches, restores, steps lost.

Callers: the reconcile loop (`loop`) counts; the operator serves them on :9090/metrics
(`operator.metrics_server`). The registry is the module's own, so that several control planes in
one test process do not collide in the global one.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from loraplane.core.models.v1alpha1.lorajob import Phase

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("loraplane_operator_jobs", "LoRAJobs by phase.", ["phase"], registry=REGISTRY)
DISPATCHES = Counter(
    "loraplane_operator_dispatches_total",
    "Adapters created or loaded on a runtime.",
    ["origin"],
    registry=REGISTRY,
)
RESTORES = Counter(
    "loraplane_operator_restores_total", "Jobs rescheduled after their runtime was lost.", registry=REGISTRY
)
STEPS_LOST = Counter(
    "loraplane_operator_steps_lost_total", "Training steps lost to runtime failures.", registry=REGISTRY
)
SCHEDULING_LATENCY = Histogram(
    "loraplane_operator_scheduling_latency_seconds",
    "From a job's creation (or resume) to its adapter being live.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)


class PhaseCounts:
    """Each job's last phase, kept so that the JOBS gauge is exact (not inc/dec drift)."""

    def __init__(self) -> None:
        self._phases: dict[str, Phase] = {}  #: job key -> phase

    def set(self, key: str, phase: Phase | None) -> None:
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
        for p in Phase:
            JOBS.labels(phase=p.value).set(sum(1 for v in self._phases.values() if v == p))
