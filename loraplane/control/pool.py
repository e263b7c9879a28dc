"""Runtimes as the control plane sees them: their pods, addresses and /readyz health.

Callers: the operator's Kopf handlers feed pod watch events into `RuntimePool.pod_seen` /
`pod_gone`; single-node mode registers its in-process runtimes with `runtime_seen`; both run
`RuntimePool.poll_forever`. The reconcile loop asks `candidates()` and `is_ready()`.

Design notes
============
A pod counts as a runtime only when the pod is Running with its Ready condition True *and* its
own GET /readyz says ready: the kubelet's readiness lags a crash by a probe period, while the
operator's own poll sees a dead process at once. The same poll lists each runtime's adapters, so
that following a thousand interactive jobs costs one request per runtime, not one per job. Placements made between two polls reserve a slot
locally (`reserve`), so that a burst of new jobs spreads over the pool instead of piling onto the
one pod that looked emptiest at the last poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from loraplane.control import runtime_calls
from loraplane.core.scheduling import RuntimeCandidate, pod_address, pod_is_ready

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pod:
    name: str
    address: str | None
    pod_ready: bool


class RuntimePool:
    """Runtime pods and their last /readyz answers, keyed by pod name (namespace/name)."""

    def __init__(self, *, port: int, client: runtime_calls.RuntimeCalls) -> None:
        self.port = port
        self.client = client
        self._pods: dict[str, _Pod] = {}  #: pods from the watch
        self._health: dict[str, RuntimeCandidate] = {}  #: last /readyz view per pod
        self._listeners: list[Callable[[], None]] = []  #: called when readiness or capacity changes
        self._adapters: dict[str, dict[str, dict[str, Any]]] = {}  #: pod -> adapter id -> AdapterInfo
        self._placed: dict[str, tuple[str, str]] = {}  #: job key -> (pod, tenant), as scheduled

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def pod_seen(self, key: str, pod: Mapping[str, Any]) -> None:
        self._set_pod(key, _Pod(key, pod_address(pod, self.port), pod_is_ready(pod)))

    def runtime_seen(self, key: str, address: str) -> None:
        """A runtime that is not a pod (single-node mode): known at `address`, ready once /readyz says so."""
        self._set_pod(key, _Pod(key, address, True))

    def _set_pod(self, key: str, new: _Pod) -> None:
        if self._pods.get(key) != new:
            self._pods[key] = new
            if not new.pod_ready:
                self._health.pop(key, None)
            self._changed()

    def pod_gone(self, key: str) -> None:
        if self._pods.pop(key, None) is not None:
            self._health.pop(key, None)
            self._adapters.pop(key, None)
            self._changed()

    def candidates(self) -> list[RuntimeCandidate]:
        """Every known pod, ready or not, as the scheduler wants them."""
        out = []
        for key, pod in sorted(self._pods.items()):
            health = self._health.get(key)
            if health is not None and pod.pod_ready:
                out.append(health)
            else:
                out.append(RuntimeCandidate(key, pod.address or "", None, False))
        return out

    def adapter(self, pod: str, adapter_id: str) -> dict[str, Any] | None:
        """The adapter as the pod's last listing showed it; None when absent or never listed."""
        return self._adapters.get(pod, {}).get(adapter_id)

    def is_ready(self, pod: str) -> bool:
        health = self._health.get(pod)
        return bool(health and health.ready and pod in self._pods and self._pods[pod].pod_ready)

    def placed(self, job_key: str, pod: str, tenant: str) -> None:
        """Remember where a job runs, for the tenant-spreading part of placement."""
        self._placed[job_key] = (pod, tenant)

    def unplaced(self, job_key: str) -> None:
        self._placed.pop(job_key, None)

    def tenant_jobs(self, tenant: str, *, besides: str) -> dict[str, int]:
        """pod -> jobs of `tenant` placed there, not counting job `besides`."""
        out: dict[str, int] = {}
        for key, (pod, owner) in self._placed.items():
            if owner == tenant and key != besides:
                out[pod] = out.get(pod, 0) + 1
        return out

    def reserve(self, pod: str) -> None:
        """Count a placement against the pod until the next poll says otherwise."""
        health = self._health.get(pod)
        if health is not None:
            self._health[pod] = replace(
                health, adapters=health.adapters + 1, free_slots=health.free_slots - 1
            )

    async def poll_once(self) -> None:
        """GET /readyz of every Running+Ready pod, concurrently."""
        pods = [p for p in self._pods.values() if p.pod_ready and p.address]
        answers = await asyncio.gather(*(self.client.readyz(p.address or "") for p in pods))
        listings = await asyncio.gather(*(self.client.adapters(p.address or "") for p in pods))
        for pod, listing in zip(pods, listings, strict=True):
            if listing is None:
                self._adapters.pop(pod.name, None)
            else:
                self._adapters[pod.name] = {a["adapter_id"]: a for a in listing if "adapter_id" in a}
        before = {k: (v.ready, v.base_model) for k, v in self._health.items()}
        for pod, answer in zip(pods, answers, strict=True):
            if pod.name not in self._pods:
                continue
            if answer is None:
                self._health[pod.name] = RuntimeCandidate(pod.name, pod.address or "", None, False)
                continue
            capacity = answer.get("capacity") or {}
            adapters = (answer.get("adapters") or {}).get("total", 0)
            self._health[pod.name] = RuntimeCandidate(
                pod=pod.name,
                address=pod.address or "",
                base_model=answer.get("base_model"),
                ready=bool(answer.get("ready")),
                adapters=int(adapters),
                free_slots=int(capacity.get("free_slots", 0)),
            )
        after = {k: (v.ready, v.base_model) for k, v in self._health.items()}
        if before != after:
            self._changed()

    async def poll_forever(self, interval: float, stopped: asyncio.Event) -> None:
        while not stopped.is_set():
            try:
                await self.poll_once()
            except Exception:  # a poll must never end the loop; the next one may succeed
                log.exception("runtime health poll failed")
            try:
                await asyncio.wait_for(stopped.wait(), interval)
            except TimeoutError:
                pass
