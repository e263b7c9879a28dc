"""One LoRAJob's reconcile loop: read the job, ask `core.phases`, act on the runtime, write status.

Callers: `handlers.lorajob_daemon` runs `JobLoop.run` for every job; `handlers.lorajob_deleted`
calls `unload`. The decisions are in `loraplane.core.phases` and `loraplane.core.scheduling`;
this module does the I/O they ask for and nothing else.

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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic

from loraplane.core import artifacts, errors, phases, scheduling
from loraplane.core.models.v1alpha1.lorajob import (
    Checkpoint,
    LoRAJob,
    LoRAJobStatus,
    Phase,
    Progress,
    RuntimeRef,
)
from loraplane.core.models.v1alpha1.lorajob import adapter_id as make_adapter_id
from loraplane.core.phases import Action
from loraplane.core.quotas import QUOTA_EXCEEDED
from loraplane.core.settings import OperatorSettings
from loraplane.operator import kubeapi, metrics, quotas, runs
from loraplane.operator.runtime_calls import RuntimeCalls, RuntimeRejected, RuntimeUnreachable
from loraplane.operator.runtimes import RuntimePool

log = logging.getLogger(__name__)

#: post_event(body, type, reason, message): Kopf's `kopf.event` in production.
PostEvent = Callable[[Mapping[str, Any], str, str, str], None]


@dataclass
class OperatorContext:
    """What every job loop shares."""

    settings: OperatorSettings
    store_url: str
    pool: RuntimePool
    runtime: RuntimeCalls
    jobs: kubeapi.LoRAJobs
    post_event: PostEvent
    clock: Callable[[], datetime]  #: aware wall-clock time
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

    def __init__(self, ctx: OperatorContext, body: Mapping[str, Any]) -> None:
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
                await asyncio.wait(waiting, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
        finally:
            if stopping is not None:
                stopping.cancel()
            self.ctx.wakers.pop(uid, None)

    async def _step_safely(self) -> float | None:
        """One pass, with every failure turned into a wait or a permanent Failed."""
        try:
            return await self.step()
        except kubeapi.Gone:
            return None
        except kubeapi.Retry as exc:  # 409 or 5xx from the API server: Kopf's TemporaryError, in-loop
            log.info("%s: %s; retrying in %ss", self.key, exc, exc.delay)
            return exc.delay
        except pydantic.ValidationError as exc:
            await self._reject("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
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
            return await self.follow(job, now)
        if decision.action == Action.RESTORE:
            await self.restore(job, now)
            return 0.0
        if decision.action == Action.SUSPEND:
            await self.suspend(job, now)
            return None
        if decision.action == Action.RESUME:
            await self.write(job, phases.resumed(job.status), "Resumed", decision.message)
            return 0.0
        if decision.action == Action.FAIL:
            await self.unload(job)
            new = phases.finished(job.status, Phase.FAILED, decision.reason, decision.message, now)
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
        patch = phases.status_patch(job.status, new)
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
            self.ctx.post_event(
                stored, "Warning" if warning else "Normal", reason, message or new.phase.value
            )
        return self.written

    async def schedule(self, job: LoRAJob, now: datetime) -> float | None:
        if (over := await quotas.breach(self.ctx.settings, self.ctx.jobs, job)) is not None:
            await self.write(job, phases.finished(job.status, Phase.FAILED, QUOTA_EXCEEDED, over.message, now),
                             QUOTA_EXCEEDED, over.message, warning=True)
            return None
        current = job.status.runtime.pod if job.status.runtime else None
        placement = scheduling.place(job.spec.base_model, self.ctx.pool.candidates(), current=current,
                                     tenant_jobs=self.ctx.pool.tenant_jobs(job.spec.tenant, besides=self.key))
        if placement.runtime is None:
            new = phases.unschedulable(job.status, placement.reason.value, placement.message, now)
            await self.write(job, new, placement.reason.value, placement.message)
            return self.ctx.settings.health_interval_s
        runtime = RuntimeRef(pod=placement.runtime.pod, address=placement.runtime.address)
        self.ctx.pool.placed(self.key, runtime.pod, job.spec.tenant)
        if job.status.runtime != runtime or job.status.phase != Phase.SCHEDULED:
            job = await self.write(
                job,
                phases.scheduled(job.status, runtime, placement.message, now),
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
                await self._record_run(job)
                run = await self.ctx.runtime.train_status(runtime.address, aid)
                if runs.needs_new_run(run, adapter_was_placed=placed):
                    await self.ctx.runtime.start_training(
                        runtime.address, aid, runs.train_request(job, self.ctx.store_url, plan.step)
                    )
        except RuntimeRejected as exc:
            new = phases.dispatch_failed(job.status, str(exc), now, backoff_base=self.ctx.backoff_base_s)
            await self.write(job, new, "DispatchFailed", new.message or "", warning=True)
            return 0.0
        except RuntimeUnreachable as exc:
            log.info("%s: runtime %s unreachable during dispatch: %s", self.key, runtime.pod, exc)
            return self.ctx.settings.health_interval_s
        new = phases.running(job.status, plan, now, generation=job.metadata.generation)
        restoring = next(
            (c for c in job.status.conditions if c.type == phases.RESTORED and c.status == "False"), None
        )
        message = f"adapter {aid} live on {runtime.pod}" + (
            f" from {plan.source} (step {plan.step})" if plan.source else ""
        )
        if restoring is not None:
            new = phases.restored(
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

    async def follow(self, job: LoRAJob, now: datetime) -> float | None:
        assert job.status.runtime is not None
        address = job.status.runtime.address
        aid = make_adapter_id(job.metadata.namespace, job.metadata.name)
        try:
            if job.spec.mode == "training":
                return await self._follow_training(job, address, aid, now)
            info = self.ctx.pool.adapter(job.status.runtime.pod, aid)
            if info is None:  # not in the last listing (or none yet): ask before declaring it lost
                info = await self.ctx.runtime.adapter(address, aid)
            if info is None:
                await self.restore(job, now)
                return 0.0
            job = await self._note_step(job, info)
            await self._check_idle(job, address, aid, info, now)
        except RuntimeUnreachable:
            pass  # the health poll decides whether the runtime is lost
        return self.ctx.settings.health_interval_s

    async def _follow_training(self, job: LoRAJob, address: str, aid: str, now: datetime) -> float | None:
        train = await self.ctx.runtime.train_status(address, aid)
        if train is None:
            await self.restore(job, now)
            return 0.0
        progress = Progress(
            step=int(train.get("step") or 0),
            total_steps=train.get("total_steps"),
            loss=train.get("loss"),
            tokens=int(train.get("tokens") or 0),
        )
        last = train.get("last_checkpoint")
        ckpt = None
        if last:
            ckpt = Checkpoint(
                path=runs.checkpoint_path(self.ctx.store_url, last["url"]),
                step=int(last["step"]),
                time=phases.iso(now),
            )
        state = train.get("state")
        interval = self.ctx.settings.progress_interval_s
        if last and int(last["step"]) > self.recorded_step:
            await self._record_states(job, last_step=int(last["step"]), final=None)
        if state == "running":
            mono = time.monotonic()
            if phases.progress_due(self.last_progress_write, mono, interval):
                await self.write(job, phases.progressed(job.status, progress, ckpt), "Progress", "")
                self.last_progress_write = mono
            return min(interval, self.ctx.settings.health_interval_s)
        if state == "succeeded":
            assert job.spec.training is not None
            output = artifacts.TinkerPath(runs.run_id(job), "weights", job.spec.training.output_name)
            final = Checkpoint(path=str(output), step=progress.step, time=phases.iso(now))
            await self._record_states(job, last_step=progress.step, final=(output.name, progress.step))
            new = phases.progressed(job.status, progress, final)
            message = f"trained {progress.step} steps; final state {output}"
            new = phases.finished(new, Phase.SUCCEEDED, "Succeeded", message, now)
            await self._delete_adapter(address, aid)
            await self.write(job, new, "Succeeded", message)
            return None
        error = str(train.get("error") or "training failed")
        await self._delete_adapter(address, aid)
        new = phases.dispatch_failed(
            phases.progressed(job.status, progress, ckpt), error, now, backoff_base=self.ctx.backoff_base_s
        )
        await self.write(job, new, "TrainingFailed", new.message or error, warning=True)
        return 0.0

    async def _record_run(self, job: LoRAJob) -> None:
        """Write the declarative run's run.json once, so the Tinker API knows the run and its owner."""
        if self.run_recorded:
            return
        store = artifacts.ArtifactStore(self.ctx.store_url)
        url = artifacts.run_record_url(store.url, runs.run_id(job))
        record = runs.run_record(job, phases.iso(self.ctx.clock()))

        def write() -> None:
            if store.read_json(url) is None:
                store.write_json(url, record)

        try:
            await asyncio.to_thread(write)
            self.run_recorded = True
        except OSError as exc:  # the run goes on; the record is written on the next dispatch or follow
            log.warning("%s: could not write the run record %s: %s", self.key, url, exc)

    async def _record_states(self, job: LoRAJob, *, last_step: int, final: tuple[str, int] | None) -> None:
        """Write checkpoint.json for the run's complete training states that have none yet."""
        await self._record_run(job)
        store = artifacts.ArtifactStore(self.ctx.store_url)
        run = runs.run_id(job)
        now = phases.iso(self.ctx.clock())

        def write() -> None:
            names = store.children(artifacts.join(artifacts.run_url(store.url, run), "weights"))
            for name, step in runs.complete_states(names, last_step=last_step, final=final and final[0]):
                path = artifacts.TinkerPath(run, "weights", name)
                record_url = artifacts.checkpoint_record_url(store.url, path)
                if store.read_json(record_url) is None:
                    size = store.size_bytes(artifacts.checkpoint_url(store.url, path))
                    store.write_json(record_url, artifacts.build_checkpoint_record(
                        path=path, now=now, size_bytes=size, step=step if step is not None else final[1]))

        try:
            await asyncio.to_thread(write)
            self.recorded_step = last_step
        except OSError as exc:
            log.warning("%s: could not record the states of run %s: %s", self.key, run, exc)

    async def _note_step(self, job: LoRAJob, info: Mapping[str, Any]) -> LoRAJob:
        """Record an interactive adapter's step and last loss (rate-bounded) for status and its columns.

        The step is also the one a restore counts lost steps from.
        """
        progress = phases.interactive_progress(job.status.progress, info)
        if progress is None:
            return job
        mono = time.monotonic()
        if not phases.progress_due(self.last_progress_write, mono, self.ctx.settings.progress_interval_s):
            return job
        self.last_progress_write = mono
        return await self.write(job, phases.progressed(job.status, progress, None), "Progress", "")

    async def _check_idle(
        self, job: LoRAJob, address: str, aid: str, info: Mapping[str, Any], now: datetime
    ) -> None:
        """Offload an adapter idle past idleTimeoutSeconds once; clear the Idle condition on use."""
        idle = phases.idle_expired(job, last_used=info.get("last_used"), now=now.timestamp())
        marked = any(c.type == phases.IDLE and c.status == "True" for c in job.status.conditions)
        if idle and not marked and info.get("resident"):
            await self.ctx.runtime.offload_adapter(address, aid)
            message = f"idle for {job.spec.idle_timeout_seconds}s or more; adapter offloaded from the device"
            conditions = phases.set_condition(job.status.conditions, phases.IDLE, "True", "IdleTimeout", message, now)
            await self.write(job, job.status.model_copy(update={"conditions": conditions}), "Idle", message)
            self.ctx.post_event(self.body, "Normal", "Idle", message)
        elif marked and not idle:
            conditions = phases.set_condition(job.status.conditions, phases.IDLE, "False", "Active", "in use", now)
            await self.write(job, job.status.model_copy(update={"conditions": conditions}), "Active", "in use")

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
            store = artifacts.ArtifactStore(self.ctx.store_url)
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
        new, message = phases.runtime_lost(job, now, saved)
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
                await self._delete_adapter(runtime.address, aid)
        elif runtime is not None:
            save_error = f"runtime {runtime.pod} is not ready"
        new = phases.suspended(job.status, saved, now, save_error=save_error)
        await self.write(job, new, "Suspended", new.message or "suspended", warning=save_error is not None)

    async def unload(self, job: LoRAJob) -> None:
        """Remove the job's adapter from its runtime, if it is there and reachable."""
        if job.status.runtime is not None:
            aid = make_adapter_id(job.metadata.namespace, job.metadata.name)
            await self._delete_adapter(job.status.runtime.address, aid)

    async def _delete_adapter(self, address: str, aid: str) -> None:
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
        self.ctx.post_event(stored, "Warning", "InvalidSpec", patch["message"])
