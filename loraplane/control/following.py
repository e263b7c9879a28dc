"""Following a running job: a declarative run's progress, checkpoints and end; an interactive
adapter's step and idleness.

Callers: `loop.JobLoop.step` on every pass of a Running job (`follow`). Declarative runs have no
gateway in their path, so this is also where their run record and the records of their complete
training states are written, for the Tinker API to list and load them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from loraplane.clients import artifact_store
from loraplane.control import runs
from loraplane.control.runtime_calls import RuntimeUnreachable
from loraplane.core import artifacts, phases, transitions
from loraplane.core.models.v1alpha1.lorajob import Checkpoint, LoRAJob, Phase, Progress
from loraplane.core.runtime_ops import job_adapter_id as make_adapter_id

if TYPE_CHECKING:
    from loraplane.control.loop import JobLoop

log = logging.getLogger(__name__)


async def follow(loop: JobLoop, job: LoRAJob, now: datetime) -> float | None:
    assert job.status.runtime is not None
    address = job.status.runtime.address
    aid = make_adapter_id(job.metadata.namespace, job.metadata.name)
    try:
        if job.spec.mode == "training":
            return await follow_training(loop, job, address, aid, now)
        info = loop.ctx.pool.adapter(job.status.runtime.pod, aid)
        if info is None:  # not in the last listing (or none yet): ask before declaring it lost
            info = await loop.ctx.runtime.adapter(address, aid)
        if info is None:
            await loop.restore(job, now)
            return 0.0
        job = await note_step(loop, job, info)
        await check_idle(loop, job, address, aid, info, now)
    except RuntimeUnreachable:
        pass  # the health poll decides whether the runtime is lost
    return loop.ctx.settings.health_interval_s

async def follow_training(loop: JobLoop, job: LoRAJob, address: str, aid: str, now: datetime) -> float | None:
    train = await loop.ctx.runtime.train_status(address, aid)
    if train is None:
        await loop.restore(job, now)
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
            path=runs.checkpoint_path(loop.ctx.store_url, last["url"]),
            step=int(last["step"]),
            time=phases.iso(now),
        )
    state = train.get("state")
    interval = loop.ctx.settings.progress_interval_s
    if last and int(last["step"]) > loop.recorded_step:
        await record_states(loop, job, last_step=int(last["step"]), final=None)
    if state == "running":
        mono = time.monotonic()
        if phases.progress_due(loop.last_progress_write, mono, interval):
            await loop.write(job, transitions.progressed(job.status, progress, ckpt), "Progress", "")
            loop.last_progress_write = mono
        return min(interval, loop.ctx.settings.health_interval_s)
    if state == "succeeded":
        assert job.spec.training is not None
        output = artifacts.TinkerPath(runs.run_id(job), "weights", job.spec.training.output_name)
        final = Checkpoint(path=str(output), step=progress.step, time=phases.iso(now))
        await record_states(loop, job, last_step=progress.step, final=(output.name, progress.step))
        new = transitions.progressed(job.status, progress, final)
        message = f"trained {progress.step} steps; final state {output}"
        new = transitions.finished(new, Phase.SUCCEEDED, "Succeeded", message, now)
        await loop.delete_adapter(address, aid)
        await loop.write(job, new, "Succeeded", message)
        return None
    error = str(train.get("error") or "training failed")
    await loop.delete_adapter(address, aid)
    new = transitions.dispatch_failed(
        transitions.progressed(job.status, progress, ckpt), error, now, backoff_base=loop.ctx.backoff_base_s
    )
    await loop.write(job, new, "TrainingFailed", new.message or error, warning=True)
    return 0.0

async def record_run(loop: JobLoop, job: LoRAJob) -> None:
    """Write the declarative run's run.json once, so the Tinker API knows the run and its owner."""
    if loop.run_recorded:
        return
    store = artifact_store.ArtifactStore(loop.ctx.store_url)
    url = artifacts.run_record_url(store.url, runs.run_id(job))
    record = runs.run_record(job, phases.iso(loop.ctx.clock()))

    def write() -> None:
        if store.read_json(url) is None:
            store.write_json(url, record)

    try:
        await asyncio.to_thread(write)
        loop.run_recorded = True
    except OSError as exc:  # the run goes on; the record is written on the next dispatch or follow
        log.warning("%s: could not write the run record %s: %s", loop.key, url, exc)

async def record_states(loop: JobLoop, job: LoRAJob, *, last_step: int, final: tuple[str, int] | None) -> None:
    """Write checkpoint.json for the run's complete training states that have none yet."""
    await record_run(loop, job)
    store = artifact_store.ArtifactStore(loop.ctx.store_url)
    run = runs.run_id(job)
    now = phases.iso(loop.ctx.clock())

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
        loop.recorded_step = last_step
    except OSError as exc:
        log.warning("%s: could not record the states of run %s: %s", loop.key, run, exc)

async def note_step(loop: JobLoop, job: LoRAJob, info: Mapping[str, Any]) -> LoRAJob:
    """Record an interactive adapter's step and last loss (rate-bounded) for status and its columns.

    The step is also the one a restore counts lost steps from.
    """
    progress = phases.interactive_progress(job.status.progress, info)
    if progress is None:
        return job
    mono = time.monotonic()
    if not phases.progress_due(loop.last_progress_write, mono, loop.ctx.settings.progress_interval_s):
        return job
    loop.last_progress_write = mono
    return await loop.write(job, transitions.progressed(job.status, progress, None), "Progress", "")

async def check_idle(
    loop: JobLoop, job: LoRAJob, address: str, aid: str, info: Mapping[str, Any], now: datetime
) -> None:
    """Offload an adapter idle past idleTimeoutSeconds once; clear the Idle condition on use."""
    idle = phases.idle_expired(job, last_used=info.get("last_used"), now=now.timestamp())
    marked = any(c.type == phases.IDLE and c.status == "True" for c in job.status.conditions)
    if idle and not marked and info.get("resident"):
        await loop.ctx.runtime.offload_adapter(address, aid)
        message = f"idle for {job.spec.idle_timeout_seconds}s or more; adapter offloaded from the device"
        conditions = transitions.set_condition(job.status.conditions, phases.IDLE, "True", "IdleTimeout", message, now)
        await loop.write(job, job.status.model_copy(update={"conditions": conditions}), "Idle", message)
        loop.ctx.jobs.post_event(loop.body, "Normal", "Idle", message)
    elif marked and not idle:
        conditions = transitions.set_condition(job.status.conditions, phases.IDLE, "False", "Active", "in use", now)
        await loop.write(job, job.status.model_copy(update={"conditions": conditions}), "Active", "in use")
