"""One LoRAJob's reconcile loop: read the job, ask `core.phases`, act on the runtime, write status.

Callers: the operator's Kopf daemon (`operator.handlers`) and single-node mode's embedded control
plane (`singlenode.controlplane`) each run `JobLoop.run` for every job, and call `unload` when a
job is deleted. The decisions are in `loraplane.core.phases` and `loraplane.core.scheduling`;
this module does the I/O they ask for, through `store.JobStore` and `pool.RuntimePool`.

Design notes
============
Idempotence. Before creating or loading an adapter the loop asks the runtime whether it already
holds it, and before starting a run whether one is going, so that an operator restarted between
a dispatch and its status write dispatches nothing twice. The placement is written (phase
Scheduled, status.runtime) *before* the dispatch, so that a restarted operator goes back to the
same pod (placement is sticky) instead of leaving an orphan adapter on another.

Restores. A restore (and every re-dispatch) reads the training states of the job's run from the
artifact store, since saves that a Tinker user makes through the gateway reach no status field;
`phases.restore_plan` picks the newest of those and status.latestCheckpoint.

Freshness. Status is written with a merge patch and the loop goes on from the stored object
the API returns, until the watch (Kopf's live body) shows a newer version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic

from loraplane.clients import artifact_store
from loraplane.control import following, metrics, quotas, runs
from loraplane.control.pool import RuntimePool
from loraplane.control.runtime_calls import RuntimeCalls, RuntimeRejected, RuntimeUnreachable
from loraplane.control.store import JobGone, JobStore, RetryLater
from loraplane.core import artifacts, errors, phases, scheduling, transitions
from loraplane.core.models.v1alpha1.lorajob import (
    Checkpoint,
    LoRAJob,
    LoRAJobStatus,
    Phase,
    RuntimeRef,
)
from loraplane.core.phases import Action
from loraplane.core.quotas import QUOTA_EXCEEDED, QuotaTable
from loraplane.core.runtime_ops import job_adapter_id as make_adapter_id
from loraplane.core.settings import OperatorSettings

log = logging.getLogger(__name__)

@dataclass
class ControlContext:
    """What every job loop shares."""

    settings: OperatorSettings
    store_url: str
    pool: RuntimePool
    runtime: RuntimeCalls
    jobs: JobStore
    clock: Callable[[], datetime]  #: aware wall-clock time
    #: tenants' quotas, for jobs that reach the loop without the gateway (`kubectl apply`, `loraplane jobs`)
    quotas: QuotaTable = field(default_factory=QuotaTable)
    backoff_base_s: float = phases.BACKOFF_BASE_S  #: first retry delay after a failed attempt
    phase_counts: metrics.PhaseCounts = field(default_factory=metrics.PhaseCounts)
    wakers: dict[str, asyncio.Event] = field(default_factory=dict)  #: job uid -> wake-up event

    def waker(self, uid: str) -> asyncio.Event:
        return self.wakers.setdefault(uid, asyncio.Event())

    def wake_all(self) -> None:
        for event in self.wakers.values():
            event.set()


def _newer(live: str | None, written: str | None, written_over: str | None) -> bool:
    """Whether the live body is at least as new as our write. Pure.

    resourceVersions are opaque, but etcd's are increasing integers, which
    tells apart an event that arrived late from one after our write. For any other kind, the
    body counts as newer once it differs from the one our write was based on.
    """
    if live is not None and written is not None and live.isdigit() and written.isdigit():
        return int(live) >= int(written)
    return live != written_over


class JobLoop:
    """The reconcile loop of one job; state is only what bounds writes and tracks freshness."""

    def __init__(self, ctx: ControlContext, body: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.body = body  #: Kopf's live view of the object
        self.written: LoRAJob | None = None  #: the object our last write returned
        self.written_over: str | None = None  #: the resourceVersion the live body had before it
        self.last_progress_write: float | None = None  #: monotonic time of the last progress write
        self.run_recorded = False  #: run.json of a declarative run is known to exist
        self.recorded_step = 0  #: the run's states up to this step have their checkpoint.json

    @property
    def key(self) -> str:
        meta = self.body.get("metadata", {})
        return f"{meta.get('namespace')}/{meta.get('name')}"

    def current(self) -> LoRAJob:
        """The freshest view: Kopf's live body, or our last write while the watch lags behind it."""
        live_rv = self.body.get("metadata", {}).get("resourceVersion")
        if self.written is not None and not _newer(
            live_rv, self.written.metadata.resourceVersion, self.written_over
        ):
            return self.written
        self.written = None
        return LoRAJob.from_body(dict(self.body))

    async def run(self, stopped: Any, uid: str) -> None:
        """Reconcile until Kopf stops the daemon (deletion or shutdown); wake on changes."""
        waker = self.ctx.waker(uid)
        stopping = asyncio.ensure_future(stopped.wait()) if hasattr(stopped, "wait") else None
        try:
            while not stopped:
                waker.clear()
                delay = await self._step_safely()
                if stopped:
                    break
                woken = asyncio.ensure_future(waker.wait())
                waiting = {woken} | ({stopping} if stopping is not None else set())
                try:
                    await asyncio.wait(waiting, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
        finally:
            if stopping is not None:
                stopping.cancel()
            self.ctx.wakers.pop(uid, None)

    async def _step_safely(self) -> float | None:
        """One pass, with every failure turned into a wait or a permanent Failed."""
        try:
            return await self.step()
        except JobGone:
            return None
        except RetryLater as exc:  # 409 or 5xx from the API server: Kopf's TemporaryError, in-loop
            log.info("%s: %s; retrying in %ss", self.key, exc, exc.delay)
            return exc.delay
        except pydantic.ValidationError as exc:
            await self._reject(errors.invalid_input(exc.errors()).message)
        except errors.InvalidInput as exc:  # a value only the operator can judge, e.g. resumeFrom.path
            await self._reject(exc.message)
        except (RuntimeUnreachable, RuntimeRejected) as exc:
            log.info("%s: runtime call failed: %s", self.key, exc)
            return self.ctx.settings.health_interval_s
        return None

    async def step(self) -> float | None:
        """One pass; returns seconds until the next one (None: on the next change)."""
        job = self.current()
        now = self.ctx.clock()
        pod = job.status.runtime.pod if job.status.runtime else None
        decision = phases.decide(job, runtime_ready=bool(pod and self.ctx.pool.is_ready(pod)), now=now)
        self.ctx.phase_counts.set(self.key, job.status.phase)
        poll = self.ctx.settings.health_interval_s
        if decision.action == Action.WAIT:
            return decision.delay
        if decision.action == Action.SCHEDULE:
            return await self.schedule(job, now)
        if decision.action == Action.FOLLOW:
            return await following.follow(self, job, now)
        if decision.action == Action.RESTORE:
            await self.restore(job, now)
            return 0.0
        if decision.action == Action.SUSPEND:
            await self.suspend(job, now)
            return None
        if decision.action == Action.RESUME:
            await self.write(job, transitions.resumed(job.status), "Resumed", decision.message)
            return 0.0
        if decision.action == Action.FAIL:
            await self.unload(job)
            new = transitions.finished(job.status, Phase.FAILED, decision.reason, decision.message, now)
            await self.write(job, new, decision.reason, decision.message, warning=True)
            return None
        if decision.action == Action.DELETE:
            log.info("%s: %s; deleting", self.key, decision.message)
            await self.ctx.jobs.delete(job.metadata.namespace or "default", job.metadata.name)
            return None
        return poll

    async def write(
        self, job: LoRAJob, new: LoRAJobStatus, reason: str, message: str, *, warning: bool = False
    ) -> LoRAJob:
        """Patch status when it changed; post an Event on every phase transition."""
        patch = transitions.status_patch(job.status, new)
        if not patch:
            return job
        stored = await self.ctx.jobs.patch_status(
            job.metadata.namespace or "default", job.metadata.name, patch
        )
        self.written_over = self.body.get("metadata", {}).get("resourceVersion")
        self.written = LoRAJob.from_body(stored)
        self.ctx.phase_counts.set(self.key, self.written.status.phase)
        if job.status.phase != new.phase:
            log.info("%s: %s -> %s (%s: %s)", self.key, job.status.phase, new.phase, reason, message)
            self.ctx.jobs.post_event(
                stored, "Warning" if warning else "Normal", reason, message or new.phase.value
            )
        return self.written

    async def schedule(self, job: LoRAJob, now: datetime) -> float | None:
        if (over := await quotas.breach(self.ctx.quotas, self.ctx.jobs, self.ctx.settings.namespace, job)) is not None:
            await self.write(job, transitions.finished(job.status, Phase.FAILED, QUOTA_EXCEEDED, over.message, now),
                             QUOTA_EXCEEDED, over.message, warning=True)
            return None
        current = job.status.runtime.pod if job.status.runtime else None
        placement = scheduling.place(job.spec.base_model, self.ctx.pool.candidates(), current=current,
                                     tenant_jobs=self.ctx.pool.tenant_jobs(job.spec.tenant, besides=self.key))
        if placement.runtime is None:
            new = transitions.unschedulable(job.status, placement.reason.value, placement.message, now)
            await self.write(job, new, placement.reason.value, placement.message)
            return self.ctx.settings.health_interval_s
        runtime = RuntimeRef(pod=placement.runtime.pod, address=placement.runtime.address)
        self.ctx.pool.placed(self.key, runtime.pod, job.spec.tenant)
        if job.status.runtime != runtime or job.status.phase != Phase.SCHEDULED:
            job = await self.write(
                job,
                transitions.scheduled(job.status, runtime, placement.message, now),
                "Scheduled",
                placement.message,
            )
            if placement.reason != scheduling.PlacementReason.STICKY:
                self.ctx.pool.reserve(runtime.pod)
        return await self.dispatch(job, runtime, now)

    async def dispatch(self, job: LoRAJob, runtime: RuntimeRef, now: datetime) -> float | None:
        aid = make_adapter_id(job.metadata.namespace, job.metadata.name)
        plan = phases.restore_plan(job, await self.saved_states(job))
        placed = False
        try:
            if await self.ctx.runtime.adapter(runtime.address, aid) is None:
                placed = True
                if plan.source is None:
                    await self.ctx.runtime.create_adapter(runtime.address, aid, job.spec.lora)
                else:
                    first = job.status.start_time is None
                    await self.ctx.runtime.load_adapter(
                        runtime.address,
                        aid,
                        runs.checkpoint_source_url(self.ctx.store_url, plan.source),
                        optimizer=plan.optimizer,
                        expect_seq=1 if first else None,
                    )
                metrics.DISPATCHES.labels(origin=plan.origin).inc()
            if job.spec.mode == "training":
                await following.record_run(self, job)
                run = await self.ctx.runtime.train_status(runtime.address, aid)
                if runs.needs_new_run(run, adapter_was_placed=placed):
                    await self.ctx.runtime.start_training(
                        runtime.address, aid, runs.train_request(job, self.ctx.store_url, plan.step)
                    )
        except RuntimeRejected as exc:
            new = transitions.dispatch_failed(job.status, str(exc), now, backoff_base=self.ctx.backoff_base_s)
            await self.write(job, new, "DispatchFailed", new.message or "", warning=True)
            return 0.0
        except RuntimeUnreachable as exc:
            log.info("%s: runtime %s unreachable during dispatch: %s", self.key, runtime.pod, exc)
            return self.ctx.settings.health_interval_s
        new = transitions.running(job.status, plan, now, generation=job.metadata.generation)
        restoring = next(
            (c for c in job.status.conditions if c.type == phases.RESTORED and c.status == "False"), None
        )
        message = f"adapter {aid} live on {runtime.pod}" + (
            f" from {plan.source} (step {plan.step})" if plan.source else ""
        )
        if restoring is not None:
            new = transitions.restored(
                new,
                f"restored on {runtime.pod} from {plan.source or 'a fresh adapter'} (step {plan.step})",
                now,
            )
        if job.status.start_time is None:
            created = phases.parse_time(job.metadata.creationTimestamp)
            if created is not None:
                metrics.SCHEDULING_LATENCY.observe(max(0.0, (now - created).total_seconds()))
        await self.write(job, new, "Running", message)
        return 0.0

    async def saved_states(self, job: LoRAJob) -> list[Checkpoint]:
        """The training states of the job's run in the artifact store (see `runs.saved_states`).

        Read only once the job has run: before, none can be its own. A store that cannot be read
        now yields none, so that a restore still happens, from status.latestCheckpoint.
        """
        if job.status.start_time is None:
            return []
        run = runs.run_id(job)
        now = phases.iso(self.ctx.clock())

        def read() -> list[tuple[artifacts.TinkerPath, dict[str, Any] | None]]:
            store = artifact_store.ArtifactStore(self.ctx.store_url)
            return [
                (path, store.read_json(artifacts.checkpoint_record_url(store.url, path)))
                for path in store.checkpoints(run)
            ]

        try:
            entries = await asyncio.to_thread(read)
        except (OSError, ValueError) as exc:
            log.warning("%s: could not list the saved states of run %s: %s", self.key, run, exc)
            return []
        return runs.saved_states(entries, now)

    async def restore(self, job: LoRAJob, now: datetime) -> None:
        saved = await self.saved_states(job)
        plan = phases.restore_plan(job, saved)
        new, message = transitions.runtime_lost(job, now, saved)
        metrics.RESTORES.inc()
        metrics.STEPS_LOST.inc(plan.steps_lost)
        await self.write(job, new, "RuntimeLost", message, warning=True)

    async def suspend(self, job: LoRAJob, now: datetime) -> None:
        """Save the adapter's state, then remove it and free the slot (spec.suspend).

        The runtime cannot stop a declarative run, so the save is queued on the adapter behind
        the op in flight: it runs between two of the run's ops and holds the weights and moments
        of the last finished step, which is the step it reports (and the run resumes from).
        Deleting the adapter then ends the run. A failed save still frees the slot; the status
        says how many steps that loses. An unreachable runtime raises, to try again later.
        """
        saved, save_error = None, None
        runtime = job.status.runtime
        if runtime is not None and self.ctx.pool.is_ready(runtime.pod):
            aid = make_adapter_id(job.metadata.namespace, job.metadata.name)
            info = await self.ctx.runtime.adapter(runtime.address, aid)
            if info is not None:
                path = runs.suspend_path(job, int(info.get("step") or 0))
                try:
                    result = await self.ctx.runtime.save_state(
                        runtime.address, aid, artifacts.checkpoint_url(self.ctx.store_url, path)
                    )
                    saved = Checkpoint(path=str(path), step=int(result.get("step") or 0), time=phases.iso(now))
                except RuntimeRejected as exc:
                    log.warning("%s: could not save before suspending: %s", self.key, exc)
                    save_error = str(exc)
                await self.delete_adapter(runtime.address, aid)
        elif runtime is not None:
            save_error = f"runtime {runtime.pod} is not ready"
        new = transitions.suspended(job.status, saved, now, save_error=save_error)
        await self.write(job, new, "Suspended", new.message or "suspended", warning=save_error is not None)

    async def unload(self, job: LoRAJob) -> None:
        """Remove the job's adapter from its runtime, if it is there and reachable."""
        if job.status.runtime is not None:
            aid = make_adapter_id(job.metadata.namespace, job.metadata.name)
            await self.delete_adapter(job.status.runtime.address, aid)

    async def delete_adapter(self, address: str, aid: str) -> None:
        try:
            await self.ctx.runtime.delete_adapter(address, aid)
        except (RuntimeUnreachable, RuntimeRejected) as exc:
            log.info("%s: adapter %s not deleted: %s", self.key, aid, exc)

    async def _reject(self, reason: str) -> None:
        """A spec the operator cannot run: Failed, naming the fields."""
        meta = self.body.get("metadata", {})
        if (self.body.get("status") or {}).get("phase") == Phase.FAILED.value:
            return
        patch = {"phase": Phase.FAILED.value, "message": f"invalid spec: {reason}"}
        stored = await self.ctx.jobs.patch_status(meta.get("namespace") or "default", meta["name"], patch)
        self.ctx.jobs.post_event(stored, "Warning", "InvalidSpec", patch["message"])
