"""EmbeddedControlPlane: LoRAJobs without Kubernetes, for `loraplane serve`.

Callers: `singlenode.server` builds it and hands it to the gateway, which uses it through
`loraplane.core.controlplane.ControlPlane` exactly as it uses the Kubernetes one; the gateway's
`/loraplane/v1/jobs` routes (`loraplane jobs`) apply, read and delete manifests through it.

Design notes
============
* The life cycle is the operator's: one `loraplane.control.loop.JobLoop` per job, over the same
  pure decisions, with an SQLite file (`jobstore.SqliteJobStore`) where the operator has the
  Kubernetes API, and the in-process runtimes registered in a `RuntimePool` where the operator
  has pod watches. So suspend, TTL, backoff, idle timeout, declarative training and restores from
  the last checkpoint behave as on a cluster.
* The store notifies this object of every write; that keeps each loop's live body current (the
  role of Kopf's watch), wakes the loop, and wakes callers of `wait_running`.
* A restart reads every job back and starts its loop. A job that was Running finds its runtime
  up but its adapter gone, which the loop handles as on a cluster: a restore from the newest saved
  state, with the steps lost said in a condition and an Event.
* Deletion is what the operator's finalizer does: the loop stops, the adapter is unloaded, the
  object and its Events go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from loraplane.control import loop
from loraplane.control.pool import RuntimePool
from loraplane.control.runtime_calls import RuntimeCalls
from loraplane.core import errors, phases
from loraplane.core.manifests import validated
from loraplane.core.models.v1alpha1 import LoRAJob, Phase, RuntimeRef
from loraplane.core.quotas import QuotaTable
from loraplane.core.runtime_ops import job_adapter_id
from loraplane.core.settings import OperatorSettings
from loraplane.singlenode.jobstore import SqliteJobStore

log = logging.getLogger(__name__)

#: The one namespace of single-node jobs (what the API server would call a job created without one).
NAMESPACE = "default"


@dataclass(frozen=True)
class ServedRuntime:
    """One in-process runtime: its name, the address its API answers on, and its base model."""

    pod: str
    address: str
    base_model: str


class _Stopped:
    """The loop's stop flag (Kopf's `DaemonStopped` in the operator): true once set, awaitable."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass
class _Daemon:
    body: dict[str, Any]  #: the job as last stored; the loop's live view
    stopped: _Stopped
    task: asyncio.Task[None] | None = None


class EmbeddedControlPlane:
    namespace = NAMESPACE

    def __init__(
        self,
        jobs: SqliteJobStore,
        runtimes: list[ServedRuntime],
        *,
        store_url: str,
        settings: OperatorSettings | None = None,
        quotas: QuotaTable | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.jobs = jobs
        self.runtimes = list(runtimes)
        self.settings = settings or OperatorSettings()
        # Loading a model's adapter state can take a while; the loop waits for it.
        self.calls = RuntimeCalls(transport=transport, timeout=600.0)
        self.pool = RuntimePool(port=0, client=self.calls)
        self.ctx = loop.ControlContext(settings=self.settings.model_copy(update={"namespace": NAMESPACE}),
                                       store_url=store_url, pool=self.pool, runtime=self.calls, jobs=jobs,
                                       clock=clock, quotas=quotas or QuotaTable())
        self._daemons: dict[str, _Daemon] = {}  #: job name -> its loop
        self._changed = asyncio.Condition()
        self._started = False
        self._poll: asyncio.Task[None] | None = None
        self._stop_poll = asyncio.Event()
        self._unloads: set[asyncio.Task[None]] = set()
        jobs.on_change(self._on_change)

    # -- life of the control plane ----------------------------------------------------------------
    async def start(self) -> None:
        """Register the runtimes, read their health once, and start a loop for every stored job."""
        for rt in self.runtimes:
            self.pool.runtime_seen(rt.pod, rt.address)
        await self.pool.poll_once()
        self.pool.on_change(self.ctx.wake_all)
        self._poll = asyncio.create_task(self.pool.poll_forever(self.settings.health_interval_s, self._stop_poll))
        self._started = True
        for body in self.jobs.bodies(NAMESPACE):
            self._start_loop(body)

    async def close(self) -> None:
        self._stop_poll.set()
        daemons, self._daemons = list(self._daemons.values()), {}
        for daemon in daemons:
            daemon.stopped.set()
        tasks = [d.task for d in daemons if d.task is not None] + list(self._unloads)
        for task in tasks:
            task.cancel()
        for task in [*tasks, *([self._poll] if self._poll else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.calls.close()
        self.jobs.close()

    def _start_loop(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        daemon = _Daemon(body=dict(body), stopped=_Stopped())
        self._daemons[name] = daemon
        uid = body["metadata"].get("uid") or name
        daemon.task = asyncio.create_task(self._run(daemon, uid), name=f"lorajob-{name}")

    async def _run(self, daemon: _Daemon, uid: str) -> None:
        try:
            await loop.JobLoop(self.ctx, daemon.body).run(daemon.stopped, uid)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one loop must not end the others; the job keeps its last status
            log.exception("the loop of job %s stopped", daemon.body.get("metadata", {}).get("name"))

    def _on_change(self, namespace: str, name: str, body: dict[str, Any] | None) -> None:
        daemon = self._daemons.get(name)
        if body is None:
            if daemon is not None:
                self._daemons.pop(name, None)
                daemon.stopped.set()
                self.ctx.wake_all()
                self._unload_later(daemon.body)
        elif daemon is not None:
            daemon.body.clear()
            daemon.body.update(body)
            uid = body["metadata"].get("uid") or name
            if uid in self.ctx.wakers:
                self.ctx.wakers[uid].set()
        elif self._started:
            self._start_loop(body)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _unload_later(self, body: dict[str, Any]) -> None:
        """The finalizer's work for a deleted job: unload its adapter, forget its placement."""

        async def unload() -> None:
            try:
                job = LoRAJob.from_body(dict(body))
            except ValueError:
                return
            await loop.JobLoop(self.ctx, body).unload(job)
            self.pool.unplaced(f"{NAMESPACE}/{job.metadata.name}")
            self.ctx.phase_counts.set(f"{NAMESPACE}/{job.metadata.name}", None)

        task = asyncio.get_running_loop().create_task(unload())
        self._unloads.add(task)
        task.add_done_callback(self._unloads.discard)

    # -- ControlPlane -----------------------------------------------------------------------------
    async def create_job(self, job: LoRAJob) -> LoRAJob:
        name = job.metadata.name
        job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": NAMESPACE})})
        existing = self.jobs.get(NAMESPACE, name)
        if existing is not None:
            old = LoRAJob.from_body(existing)
            if old.status.phase not in (Phase.SUCCEEDED, Phase.FAILED):
                if old.spec != job.spec:
                    raise errors.Conflict(f"job {name!r} exists with another spec", field="metadata.name")
                return old
            await self.delete_job(name)
        return LoRAJob.from_body(self.jobs.create(job))

    async def apply_job(self, manifest: dict[str, Any], *, tenant: str) -> tuple[LoRAJob, bool]:
        """Create the job of a manifest, or update its mutable fields: (job, created)."""
        job = validated(manifest, namespace=NAMESPACE)
        if job.spec.tenant != tenant:
            raise errors.Forbidden(f"spec.tenant is {job.spec.tenant!r}, but your API key is tenant {tenant!r}",
                                   field="spec.tenant")
        existing = self.jobs.get(NAMESPACE, job.metadata.name)
        if existing is None:
            return LoRAJob.from_body(self.jobs.create(job)), True
        if existing["spec"].get("tenant") != tenant:
            raise errors.Conflict(f"job {job.metadata.name!r} belongs to another tenant; choose another name",
                                  field="metadata.name")
        return LoRAJob.from_body(self.jobs.update(job)), False

    async def get_job(self, name: str) -> LoRAJob | None:
        body = self.jobs.get(NAMESPACE, name)
        return LoRAJob.from_body(body) if body is not None else None

    async def list_jobs(self, *, tenant: str | None = None) -> list[LoRAJob]:
        return [LoRAJob.from_body(b) for b in self.jobs.bodies(NAMESPACE, tenant=tenant)]

    async def job_events(self, name: str) -> list[dict[str, Any]]:
        return self.jobs.events(NAMESPACE, name)

    async def delete_job(self, name: str) -> None:
        daemon = self._daemons.get(name)
        self.jobs.remove(NAMESPACE, name)
        if daemon is not None and daemon.task is not None and daemon.task is not asyncio.current_task():
            daemon.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await daemon.task
        for task in list(self._unloads):
            with contextlib.suppress(Exception):
                await task

    async def wait_running(self, name: str, timeout: float) -> LoRAJob:
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._changed:
            while True:
                job = await self.get_job(name)
                if job is None:
                    raise errors.NotFound(f"unknown job {name!r}")
                if job.status.phase == Phase.RUNNING and job.status.runtime is not None:
                    return job
                failure = phases.start_failure(job)
                if failure is not None:
                    raise errors.UserError(f"job {name!r} failed: {failure}")
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise errors.CapacityError(f"job {name!r} is not running after {timeout:.0f}s: "
                                               f"{job.status.message or job.status.phase.value}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    def adapter_id(self, name: str) -> str:
        """The shared loop creates a job's adapter under `<namespace>.<name>`, as the operator does."""
        return job_adapter_id(NAMESPACE, name)

    def runtime_for(self, name: str) -> RuntimeRef | None:
        daemon = self._daemons.get(name)
        body = daemon.body if daemon is not None else None
        status = (body or {}).get("status") or {}
        if status.get("phase") != Phase.RUNNING.value or not status.get("runtime"):
            return None
        return RuntimeRef.model_validate(status["runtime"])

    async def runtimes_for_model(self, base_model: str) -> list[RuntimeRef]:
        return [RuntimeRef(pod=r.pod, address=r.address) for r in self.runtimes if r.base_model == base_model]

