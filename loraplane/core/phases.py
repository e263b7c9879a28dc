"""A LoRAJob's life: what to do next (the status each step leads to is in `transitions`).

Callers: the reconcile loop (`loraplane.control.loop`), which the operator and `loraplane serve`
both run, and the gateway's control planes (`start_failure`). Every
function here is pure: the caller passes in the job, what it observed and the time (`now`, an
aware datetime), and applies the answer (a `Decision`), writing the status that
`loraplane.core.transitions` gives for it.

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
    LoRAJob,
    LoRAJobStatus,
    Phase,
    Progress,
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
