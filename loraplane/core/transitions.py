"""The status each step of a LoRAJob's life leads to, and the patch that writes it.

Callers: the reconcile loop (`loraplane.control`), after `loraplane.core.phases` decided what to
do. Every function is pure: the old status, what happened and the time in, the new status out;
`status_patch` turns old and new into the JSON merge patch the job store applies. Conditions keep
their `lastTransitionTime` while their status does not change, as Kubernetes does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from loraplane.core.models.v1alpha1.lorajob import (
    Checkpoint,
    Condition,
    LoRAJob,
    LoRAJobStatus,
    Phase,
    Progress,
    RuntimeRef,
)
from loraplane.core.phases import (
    BACKOFF_BASE_S,
    READY,
    RESTORED,
    SCHEDULED,
    RestorePlan,
    backoff_delay,
    iso,
    newest_state,
    restore_plan,
)


def set_condition(
    conditions: list[Condition], type_: str, status: str, reason: str, message: str, now: datetime
) -> list[Condition]:
    """A copy of `conditions` with `type_` set; the transition time moves only when status does. Pure."""
    out = [c for c in conditions if c.type != type_]
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else iso(now)
    out.append(
        Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=since)
    )
    return sorted(out, key=lambda c: c.type)


def _off_runtime(status: LoRAJobStatus, phase: Phase, reason: str, message: str, now: datetime, *,
                 why: str | None = None, **changes: Any) -> LoRAJobStatus:
    """Off its runtime in `phase`: Ready False for `reason` (saying `why`, default the message). Pure."""
    conditions = set_condition(status.conditions, READY, "False", reason, why or message, now)
    return _with(status, phase=phase, runtime=None, conditions=conditions, message=message, **changes)


def _with(status: LoRAJobStatus, **changes: Any) -> LoRAJobStatus:
    return status.model_copy(update=changes, deep=True)


def unschedulable(status: LoRAJobStatus, reason: str, message: str, now: datetime) -> LoRAJobStatus:
    """Pending with Scheduled=False (NoRuntime, NoCapacity). Pure."""
    conditions = set_condition(status.conditions, SCHEDULED, "False", reason, message, now)
    return _with(status, phase=Phase.PENDING, conditions=conditions, runtime=None, message=message)


def scheduled(status: LoRAJobStatus, runtime: RuntimeRef, message: str, now: datetime) -> LoRAJobStatus:
    """Placed on `runtime`, about to be dispatched. Pure."""
    conditions = set_condition(status.conditions, SCHEDULED, "True", "Scheduled", message, now)
    return _with(status, phase=Phase.SCHEDULED, runtime=runtime, conditions=conditions, message=message)


def running(
    status: LoRAJobStatus, plan: RestorePlan, now: datetime, *, generation: int | None
) -> LoRAJobStatus:
    """The adapter is live on its runtime, loaded as `plan` says (its state becomes the latest). Pure."""
    source = f" from {plan.source} (step {plan.step})" if plan.source else ""
    message = f"adapter live{source}"
    conditions = set_condition(status.conditions, READY, "True", "AdapterLive", message, now)
    progress = status.progress
    if plan.origin == "checkpoint":
        progress = progress.model_copy(update={"step": plan.step})
    return _with(
        status,
        phase=Phase.RUNNING,
        conditions=conditions,
        progress=progress,
        latest_checkpoint=plan.checkpoint or status.latest_checkpoint,
        start_time=status.start_time or iso(now),
        next_attempt_time=None,
        observed_generation=generation,
        message=message,
    )


def runtime_lost(
    job: LoRAJob, now: datetime, saved: Sequence[Checkpoint] = ()
) -> tuple[LoRAJobStatus, str]:
    """Back to Pending after its runtime went away, one attempt used. Pure.

    `saved` as for `restore_plan`; the state chosen becomes status.latestCheckpoint, so that the
    status names what the next dispatch loads. Returns the new status and the message for the
    Event and the Restored condition.
    """
    status = job.status
    plan = restore_plan(job, saved)
    pod = status.runtime.pod if status.runtime else "?"
    if plan.source:
        what = f"restoring from {plan.source} (step {plan.step}); {plan.steps_lost} step(s) lost"
    else:
        what = f"no checkpoint, restarting from a fresh adapter; {plan.steps_lost} step(s) lost"
    message = f"runtime {pod} lost at step {status.progress.step}: {what}"
    restoring = status.model_copy(update={
        "conditions": set_condition(status.conditions, RESTORED, "False", "RuntimeLost", message, now)})
    new = _off_runtime(restoring, Phase.PENDING, "RuntimeLost", message, now, attempts=status.attempts + 1,
                       latest_checkpoint=newest_state(job, saved))
    return new, message


def restored(status: LoRAJobStatus, message: str, now: datetime) -> LoRAJobStatus:
    """Mark a completed restore (after `running`). Pure."""
    return _with(
        status, conditions=set_condition(status.conditions, RESTORED, "True", "Restored", message, now)
    )

def dispatch_failed(
    status: LoRAJobStatus, error: str, now: datetime, *, backoff_base: float = BACKOFF_BASE_S
) -> LoRAJobStatus:
    """A dispatch or training run failed: one attempt used, retry after the backoff. Pure."""
    attempts = status.attempts + 1
    retry_at = now + timedelta(seconds=backoff_delay(attempts, base=backoff_base))
    failure = f"attempt {attempts} failed: {error}"
    message = f"{failure}; retrying at {iso(retry_at)}"
    return _off_runtime(status, Phase.PENDING, "DispatchFailed", message, now, why=failure, attempts=attempts,
                        next_attempt_time=iso(retry_at))


def suspended(
    status: LoRAJobStatus, checkpoint: Checkpoint | None, now: datetime, *, save_error: str | None = None
) -> LoRAJobStatus:
    """Removed from its runtime, the slot free; `checkpoint` is the state saved first. Pure.

    Called by the operator's suspend. With a checkpoint, resuming loses nothing and progress is
    the saved step. When the save failed (`save_error`), the message says so and how many steps
    a resume from the previous checkpoint loses.
    """
    progress = status.progress
    if checkpoint is not None:
        message = f"suspended at step {checkpoint.step}; state saved at {checkpoint.path}"
        progress = progress.model_copy(update={"step": checkpoint.step})
    elif save_error is not None:
        latest = status.latest_checkpoint
        origin = f"{latest.path} (step {latest.step})" if latest else "a fresh adapter"
        lost = progress.step - (latest.step if latest else 0)
        message = (
            f"suspended without saving ({save_error}); resuming from {origin} loses {max(0, lost)} step(s)"
        )
    else:
        message = "suspended"
    return _off_runtime(status, Phase.SUSPENDED, "Suspended", message, now, progress=progress,
                        latest_checkpoint=checkpoint or status.latest_checkpoint)


def resumed(status: LoRAJobStatus) -> LoRAJobStatus:
    """spec.suspend cleared: wait for a placement again. Pure."""
    return _with(status, phase=Phase.PENDING, next_attempt_time=None, message="resuming")


def progressed(status: LoRAJobStatus, progress: Progress, checkpoint: Checkpoint | None) -> LoRAJobStatus:
    """New training progress (and a newer checkpoint, if any). Pure."""
    latest = status.latest_checkpoint
    if checkpoint is not None and (latest is None or checkpoint.step >= latest.step):
        latest = checkpoint
    return _with(status, progress=progress, latest_checkpoint=latest)


def finished(status: LoRAJobStatus, phase: Phase, reason: str, message: str, now: datetime) -> LoRAJobStatus:
    """Succeeded or Failed; the TTL clock starts. Pure."""
    return _off_runtime(status, phase, reason, message, now, completion_time=iso(now))


def status_patch(old: LoRAJobStatus, new: LoRAJobStatus) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new` (None for fields that went away). Pure.

    Empty when nothing changed, so that callers skip the write.
    """
    before, after = old.dump(), new.dump()
    patch: dict[str, Any] = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch
