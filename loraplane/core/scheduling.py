"""Placement: which runtime pod should hold a job's adapter.

Callers: the operator (`loraplane.operator.dispatching`) and the embedded control plane of
single-node mode, which both pass in what they observed of the runtimes. Nothing here does I/O.

Design notes
============
A job stays where it is while its runtime is healthy (sticky), because moving an adapter costs a
save and a load and loses whatever the optimizer did since the last checkpoint. A new or displaced
job goes to the ready runtime of its base model that holds the fewest jobs of the job's tenant, then
the fewest adapters: one tenant's many jobs spread over the runtimes instead of filling one, so a
runtime's fair share between tenants has several tenants to share between. Ties go to the pod name,
so that two operators (or one restarted) make the same choice for the same observations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

RUNTIME_URL_ANNOTATION = "loraplane.dev/runtime-url"


def parse_selector(selector: str) -> dict[str, str | None]:
    """`a=b,c` -> {"a": "b", "c": None} (None: the label must be present). Pure; used by the operator and the gateway."""
    out: dict[str, str | None] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, sep, value = part.partition("=")
        out[key.strip()] = value.strip().lstrip("=") if sep else None
    return out


def pod_address(pod: Mapping[str, Any], port: int) -> str | None:
    """The runtime API's base URL: the runtime-url annotation, else the pod IP. Pure; used by the operator and the gateway."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    if annotations.get(RUNTIME_URL_ANNOTATION):
        return str(annotations[RUNTIME_URL_ANNOTATION]).rstrip("/")
    ip = (pod.get("status") or {}).get("podIP")
    return f"http://{ip}:{port}" if ip else None


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    """Running, not being deleted, Ready condition True. Pure; used by the operator and the gateway."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])



class PlacementReason(StrEnum):
    STICKY = "Sticky"  # the job stays on its current runtime
    LEAST_LOADED = "LeastLoaded"  # a new placement onto the emptiest runtime
    NO_RUNTIME = "NoRuntime"  # no ready runtime serves the base model
    NO_CAPACITY = "NoCapacity"  # some do, all full


@dataclass(frozen=True)
class RuntimeCandidate:
    """What the operator knows of one runtime pod (from the pod and its GET /readyz)."""

    pod: str  #: pod name
    address: str  #: base URL of the runtime API
    base_model: str | None  #: the model its /readyz advertises (None when never answered)
    ready: bool  #: pod Running, Ready condition True and /readyz ready
    adapters: int = 0  #: adapters it holds (resident + offloaded)
    free_slots: int = 0  #: adapters it can still take


@dataclass(frozen=True)
class Placement:
    """The answer of `place`: a runtime, or none and why (for the Scheduled condition)."""

    runtime: RuntimeCandidate | None
    reason: PlacementReason
    message: str

    @property
    def placed(self) -> bool:
        return self.runtime is not None


def place(
    base_model: str,
    candidates: Iterable[RuntimeCandidate],
    *,
    current: str | None = None,
    tenant_jobs: Mapping[str, int] | None = None,
) -> Placement:
    """Choose a runtime for a job of `base_model`. Pure; called by the operator's dispatcher.

    Args:
        base_model: the job's spec.baseModel.
        candidates: every runtime pod seen, ready or not.
        current: the pod that holds the job now (status.runtime.pod), if any.
        tenant_jobs: pod -> how many other jobs of the job's tenant it holds (none: 0 everywhere).
    """
    tenant_jobs = tenant_jobs or {}
    pods = list(candidates)
    serving = [c for c in pods if c.ready and c.base_model == base_model]
    if current is not None:
        for c in serving:
            if c.pod == current:
                return Placement(c, PlacementReason.STICKY, f"stays on runtime {c.pod}")
    if not serving:
        others = sorted({c.base_model for c in pods if c.ready and c.base_model})
        seen = f"ready runtimes serve {others}" if others else f"{len(pods)} runtime pod(s) seen, none ready"
        return Placement(None, PlacementReason.NO_RUNTIME, f"no ready runtime serves {base_model!r}; {seen}")
    with_room = [c for c in serving if c.free_slots > 0]
    if not with_room:
        return Placement(
            None,
            PlacementReason.NO_CAPACITY,
            f"all {len(serving)} ready runtime(s) of {base_model!r} are full; waiting for a free slot",
        )
    best = min(with_room, key=lambda c: (tenant_jobs.get(c.pod, 0), c.adapters, -c.free_slots, c.pod))
    return Placement(
        best, PlacementReason.LEAST_LOADED,
        f"placed on runtime {best.pod} ({best.adapters} adapter(s) there, "
        f"{tenant_jobs.get(best.pod, 0)} of this tenant's jobs)",
    )
