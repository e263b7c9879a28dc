"""A LoRAJob's life: what to do next, and the status each step leads to.

Callers: the reconcile loop (`loraplane.control.loop`), which the operator and `loraplane serve`
both run, and the gateway's control planes (`start_failure`). Every
function here is pure: the caller passes in the job, what it observed and the time (`now`, an
aware datetime), and applies the answer (a `Decision`, or a new `LoRAJobStatus` that it writes
with `status_patch`).

    Pending ──schedule──▶ Scheduled ──dispatched──▶ Running ──train done──▶ Succeeded
       ▲  ▲                   │                       │  │
       │  └──runtime lost / dispatch failed (attempts+1, backoff)◀─┘  └──spec.suspend──▶ Suspended
       │                                                                           │
       └─────────────────────────────── resume (spec.suspend false) ◀──────────────┘
    attempts > backoffLimit ──▶ Failed;   Succeeded/Failed + ttlSecondsAfterFinished ──▶ deleted

Design notes
============
A lost runtime costs the steps since the last saved state. `restore_plan` says which state the job
comes back from and how many steps that loses, so that the Event and condition can say so. The
candidates are status.latestCheckpoint (the operator's own: periodic, suspend, final) and the
training states of the job's run that its user saved through the gateway, which the caller reads
from the artifact store and passes in as data. A suspend saves first, so resuming loses nothing.
Conditions keep their `lastTransitionTime` while their status does not change, as Kubernetes does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from loraplane.core.models.v1alpha1.lorajob import (
    TERMINAL_PHASES,
    Checkpoint,
    Condition,
    LoRAJob,
    LoRAJobStatus,
    Phase,
    Progress,
    RuntimeRef,
)

#: First retry delay after a failed dispatch, doubled per attempt up to BACKOFF_CAP_S.
BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 300.0

#: Condition types the operator writes.
SCHEDULED = "Scheduled"
READY = "Ready"
RESTORED = "Restored"
IDLE = "Idle"


class Action(StrEnum):
    WAIT = "Wait"  # nothing to do until `delay` passes or something changes
    SCHEDULE = "Schedule"  # place the job and dispatch it (fresh, resumeFrom or latest checkpoint)
    FOLLOW = "Follow"  # running: poll the runtime for progress and idleness
    RESTORE = "Restore"  # its runtime is gone: count an attempt and schedule it again
    SUSPEND = "Suspend"  # save, remove the adapter, free the slot
    RESUME = "Resume"  # back to Pending
    FAIL = "Fail"  # backoffLimit exhausted
    DELETE = "Delete"  # finished longer ago than ttlSecondsAfterFinished


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    message: str = ""
    #: seconds until the job is worth looking at again (None: on the next change or poll)
    delay: float | None = None


@dataclass(frozen=True)
class RestorePlan:
    """Where a (re)dispatched adapter comes from."""

    source: str | None  #: checkpoint path (tinker:// or store URL); None = a fresh adapter
    step: int  #: the step that state was saved at
    optimizer: bool  #: restore the optimizer moments too
    steps_lost: int  #: progress made since that state, which is gone
    origin: str  #: "fresh", "resumeFrom" or "checkpoint"
    #: the state loaded when origin is "checkpoint" (a user's save, maybe), for status.latestCheckpoint
    checkpoint: Checkpoint | None = field(default=None, compare=False)


def iso(now: datetime) -> str:
    """Kubernetes' timestamp format. Pure."""
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """Inverse of `iso` (any ISO 8601 with a zone). Pure."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def backoff_delay(attempts: int, *, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Seconds before retry number `attempts` (1, 2, ...): base, 2*base, 4*base... capped. Pure."""
    if attempts <= 0:
        return 0.0
    return min(cap, base * 2 ** (attempts - 1))


def decide(job: LoRAJob, *, runtime_ready: bool, now: datetime) -> Decision:
    """The next action for a job. Pure; called by the operator's reconcile loop on each pass.

    Args:
        job: the job as last read.
        runtime_ready: whether status.runtime's pod is still a ready runtime (ignored without one).
        now: the current time (aware).
    """
    status, spec = job.status, job.spec
    if status.phase in TERMINAL_PHASES:
        return _after_finish(job, now)
    if status.attempts > spec.backoff_limit:
        last = last_failure(status)
        return Decision(
            Action.FAIL,
            "BackoffLimitExceeded",
            f"{status.attempts} attempts, more than backoffLimit {spec.backoff_limit}"
            + (f"; the last: {last}" if last else ""),
        )
    if spec.suspend and status.phase != Phase.SUSPENDED:
        return Decision(Action.SUSPEND, "Suspended", "spec.suspend is true")
    if status.phase == Phase.SUSPENDED:
        if spec.suspend:
            return Decision(Action.WAIT)
        return Decision(Action.RESUME, "Resumed", "spec.suspend is false")
    if status.runtime is not None and not runtime_ready:
        return Decision(Action.RESTORE, "RuntimeLost", f"runtime {status.runtime.pod} is gone or not ready")
    if status.phase == Phase.RUNNING:
        return Decision(Action.FOLLOW)
    retry_at = parse_time(status.next_attempt_time)
    if retry_at is not None and retry_at > now:
        return Decision(Action.WAIT, delay=(retry_at - now).total_seconds())
    return Decision(Action.SCHEDULE)


def _after_finish(job: LoRAJob, now: datetime) -> Decision:
    ttl = job.spec.ttl_seconds_after_finished
    finished = parse_time(job.status.completion_time)
    if ttl is None or finished is None:
        return Decision(Action.WAIT)
    remaining = (finished + timedelta(seconds=ttl) - now).total_seconds()
    if remaining <= 0:
        return Decision(Action.DELETE, "TTLExpired", f"finished {ttl}s ago (ttlSecondsAfterFinished)")
    return Decision(Action.WAIT, delay=remaining)


def _recency(ckpt: Checkpoint) -> tuple[int, datetime]:
    """Sort key of a checkpoint: step, then the time it was saved (unknown times sort first)."""
    return ckpt.step, parse_time(ckpt.time) or datetime.min.replace(tzinfo=UTC)


def newest_state(job: LoRAJob, saved: Sequence[Checkpoint] = ()) -> Checkpoint | None:
    """The newest state a restore can load: status.latestCheckpoint or a state saved in the store. Pure.

    Called by `restore_plan` and the operator's suspend. `saved` are the training states of the
    job's run found in the artifact store (saves made through the gateway, already stripped of
    expired and incomplete ones). Only those saved since the job first ran count: a run folder
    can hold the states of an earlier job of the same name. Newest is by step, then time; on a tie
    status.latestCheckpoint wins, since the operator recorded it itself.
    """
    started = parse_time(job.status.start_time)
    candidates = [job.status.latest_checkpoint] if job.status.latest_checkpoint is not None else []
    if started is not None:
        for ckpt in saved:
            when = parse_time(ckpt.time)
            if when is not None and when >= started:
                candidates.append(ckpt)
    return max(candidates, key=_recency, default=None)


def restore_plan(job: LoRAJob, saved: Sequence[Checkpoint] = ()) -> RestorePlan:
    """Which state a (re)dispatch loads, and the steps it loses. Pure; called by the dispatcher.

    The newest state the job has (`newest_state`: its latest checkpoint or a save of its run in
    the store) wins over spec.resumeFrom, which only seeds the first dispatch; with none, the
    adapter starts fresh (and a restore loses every step). Steps lost are the adapter's last known
    step (status.progress.step) less the state's.
    """
    step = job.status.progress.step
    ckpt = newest_state(job, saved)
    if ckpt is not None:
        return RestorePlan(ckpt.path, ckpt.step, True, max(0, step - ckpt.step), "checkpoint", ckpt)
    if job.spec.resume_from is not None:
        return RestorePlan(job.spec.resume_from.path, 0, job.spec.resume_from.optimizer, step, "resumeFrom")
    return RestorePlan(None, 0, False, step, "fresh")


def idle_expired(job: LoRAJob, *, last_used: float | None, now: float) -> bool:
    """Whether an interactive job has been idle past idleTimeoutSeconds. Pure; `now` in unix s."""
    timeout = job.spec.idle_timeout_seconds
    if job.spec.mode != "interactive" or timeout is None or last_used is None:
        return False
    return now - last_used >= timeout


def interactive_progress(current: Progress, info: Mapping[str, Any]) -> Progress | None:
    """The progress an SDK-driven adapter's runtime info shows, or None when nothing changed.

    Pure; called by the operator's follow loop with the runtime's AdapterInfo (`step`, `loss`:
    per weighted token of the last forward_backward), so `kubectl get lj` shows real progress.
    """
    step = info.get("step")
    loss = info.get("loss")
    update: dict[str, Any] = {}
    if isinstance(step, int) and not isinstance(step, bool) and step != current.step:
        update["step"] = step
    if isinstance(loss, int | float) and not isinstance(loss, bool) and round(float(loss), 6) != current.loss:
        update["loss"] = round(float(loss), 6)
    return current.model_copy(update=update) if update else None


def progress_due(last_write: float | None, now: float, interval: float) -> bool:
    """Whether a progress write is allowed yet (at most one per interval). Pure; monotonic seconds."""
    return last_write is None or now - last_write >= interval


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
    conditions = set_condition(status.conditions, RESTORED, "False", "RuntimeLost", message, now)
    conditions = set_condition(conditions, READY, "False", "RuntimeLost", message, now)
    new = _with(
        status,
        phase=Phase.PENDING,
        runtime=None,
        attempts=status.attempts + 1,
        conditions=conditions,
        latest_checkpoint=newest_state(job, saved),
        message=message,
    )
    return new, message


def restored(status: LoRAJobStatus, message: str, now: datetime) -> LoRAJobStatus:
    """Mark a completed restore (after `running`). Pure."""
    return _with(
        status, conditions=set_condition(status.conditions, RESTORED, "True", "Restored", message, now)
    )


#: Ready-condition reasons of a failed attempt, whose message says why it failed
FAILED_ATTEMPT_REASONS = ("DispatchFailed", "RuntimeLost")


def last_failure(status: LoRAJobStatus) -> str | None:
    """Why the job's last attempt failed, from its Ready condition; None if it did not. Pure.

    Called by `decide` when the backoff limit is exceeded, so the final Failed condition (and the
    message `kubectl get` and `describe` show) carries the cause and not only the count.
    """
    ready = next((c for c in status.conditions if c.type == READY), None)
    if ready is None or ready.status != "False" or ready.reason not in FAILED_ATTEMPT_REASONS:
        return None
    return ready.message


def dispatch_failed(
    status: LoRAJobStatus, error: str, now: datetime, *, backoff_base: float = BACKOFF_BASE_S
) -> LoRAJobStatus:
    """A dispatch or training run failed: one attempt used, retry after the backoff. Pure."""
    attempts = status.attempts + 1
    retry_at = now + timedelta(seconds=backoff_delay(attempts, base=backoff_base))
    failure = f"attempt {attempts} failed: {error}"
    message = f"{failure}; retrying at {iso(retry_at)}"
    conditions = set_condition(status.conditions, READY, "False", "DispatchFailed", failure, now)
    return _with(
        status,
        phase=Phase.PENDING,
        runtime=None,
        attempts=attempts,
        next_attempt_time=iso(retry_at),
        conditions=conditions,
        message=message,
    )


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
    conditions = set_condition(status.conditions, READY, "False", "Suspended", message, now)
    return _with(
        status,
        phase=Phase.SUSPENDED,
        runtime=None,
        progress=progress,
        latest_checkpoint=checkpoint or status.latest_checkpoint,
        conditions=conditions,
        message=message,
    )


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
    ready = "False"
    conditions = set_condition(status.conditions, READY, ready, reason, message, now)
    return _with(
        status, phase=phase, runtime=None, conditions=conditions, completion_time=iso(now), message=message
    )


def start_failure(job: LoRAJob) -> str | None:
    """Why a job that a client waits on will not start, or None while it may. Pure.

    A Failed job, and a job whose last dispatch the runtime refused (it retries with backoff, but
    a client creating a session wants the refusal now rather than after every retry).
    """
    status = job.status
    if status.phase == Phase.FAILED:
        return status.message or "no reason given"
    ready = next((c for c in status.conditions if c.type == READY), None)
    if status.phase == Phase.PENDING and ready is not None and ready.status == "False" and ready.reason == "DispatchFailed":
        return ready.message or "the runtime refused the adapter"
    return None


def status_patch(old: LoRAJobStatus, new: LoRAJobStatus) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new` (None for fields that went away). Pure.

    Empty when nothing changed, so that callers skip the write.
    """
    before, after = old.dump(), new.dump()
    patch: dict[str, Any] = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch
