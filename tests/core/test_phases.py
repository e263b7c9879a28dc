"""Phase decisions and transitions, as tables: time is passed in, nothing is read globally."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from loraplane.core import phases, transitions
from loraplane.core.models.v1alpha1.lorajob import (
    Checkpoint,
    LoRAJob,
    LoRAJobStatus,
    Phase,
    Progress,
    RuntimeRef,
)
from loraplane.core.phases import Action

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
RT = RuntimeRef(pod="rt-0", address="http://rt-0:8001")


def job(spec: dict[str, Any] | None = None, **status: Any) -> LoRAJob:
    body = {
        "metadata": {"name": "j", "namespace": "ns"},
        "spec": {"baseModel": "m", "tenant": "t", **(spec or {})},
        "status": LoRAJobStatus(**status).dump(),
    }
    return LoRAJob.from_body(body)


def ago(seconds: float) -> str:
    return phases.iso(NOW - timedelta(seconds=seconds))


@pytest.mark.parametrize(
    ("spec", "status", "runtime_ready", "action", "delay"),
    [
        # new job: schedule; waiting out a backoff: wait the rest
        ({}, {}, False, Action.SCHEDULE, None),
        ({}, {"next_attempt_time": phases.iso(NOW + timedelta(seconds=7))}, False, Action.WAIT, 7.0),
        ({}, {"next_attempt_time": ago(1)}, False, Action.SCHEDULE, None),
        # placed but not yet live (e.g. operator restarted mid-dispatch): dispatch again, idempotently
        ({}, {"phase": Phase.SCHEDULED, "runtime": RT}, True, Action.SCHEDULE, None),
        # running: follow; runtime gone: restore
        ({}, {"phase": Phase.RUNNING, "runtime": RT}, True, Action.FOLLOW, None),
        ({}, {"phase": Phase.RUNNING, "runtime": RT}, False, Action.RESTORE, None),
        ({}, {"phase": Phase.SCHEDULED, "runtime": RT}, False, Action.RESTORE, None),
        # suspend and resume
        ({"suspend": True}, {"phase": Phase.RUNNING, "runtime": RT}, True, Action.SUSPEND, None),
        ({"suspend": True}, {"phase": Phase.PENDING}, False, Action.SUSPEND, None),
        ({"suspend": True}, {"phase": Phase.SUSPENDED}, False, Action.WAIT, None),
        ({}, {"phase": Phase.SUSPENDED}, False, Action.RESUME, None),
        # backoff limit: attempts beyond it fail the job; at the limit one more try is allowed
        ({"backoffLimit": 2}, {"attempts": 3}, False, Action.FAIL, None),
        ({"backoffLimit": 2}, {"attempts": 2}, False, Action.SCHEDULE, None),
        ({"backoffLimit": 0}, {"attempts": 1, "phase": Phase.RUNNING, "runtime": RT}, True, Action.FAIL, None),
        # finished: TTL
        ({}, {"phase": Phase.SUCCEEDED, "completion_time": ago(10**6)}, False, Action.WAIT, None),
        ({"ttlSecondsAfterFinished": 60}, {"phase": Phase.SUCCEEDED, "completion_time": ago(61)}, False, Action.DELETE, None),
        ({"ttlSecondsAfterFinished": 60}, {"phase": Phase.FAILED, "completion_time": ago(60)}, False, Action.DELETE, None),
        ({"ttlSecondsAfterFinished": 60}, {"phase": Phase.SUCCEEDED, "completion_time": ago(45)}, False, Action.WAIT, 15.0),
        ({"ttlSecondsAfterFinished": 0}, {"phase": Phase.FAILED, "completion_time": ago(0)}, False, Action.DELETE, None),
        # finished jobs are not failed again or suspended
        ({"suspend": True, "backoffLimit": 0}, {"phase": Phase.FAILED, "attempts": 5}, False, Action.WAIT, None),
    ],
)
def test_decide(
    spec: dict[str, Any], status: dict[str, Any], runtime_ready: bool, action: Action, delay: float | None
) -> None:
    decision = phases.decide(job(spec, **status), runtime_ready=runtime_ready, now=NOW)
    assert decision.action == action
    assert decision.delay == delay


@pytest.mark.parametrize(
    ("spec", "status", "expected"),
    [
        ({}, {}, phases.RestorePlan(None, 0, False, 0, "fresh")),
        ({}, {"progress": Progress(step=12)}, phases.RestorePlan(None, 0, False, 12, "fresh")),
        (
            {"resumeFrom": {"path": "tinker://r/weights/a", "optimizer": False}},
            {},
            phases.RestorePlan("tinker://r/weights/a", 0, False, 0, "resumeFrom"),
        ),
        (
            {"resumeFrom": {"path": "tinker://r/weights/a"}},
            {"progress": Progress(step=30), "latest_checkpoint": Checkpoint(path="tinker://j/weights/step-20", step=20)},
            phases.RestorePlan("tinker://j/weights/step-20", 20, True, 10, "checkpoint"),
        ),
        (
            {},
            {"progress": Progress(step=20), "latest_checkpoint": Checkpoint(path="file:///s/step-20", step=20)},
            phases.RestorePlan("file:///s/step-20", 20, True, 0, "checkpoint"),
        ),
    ],
)
def test_restore_plan(spec: dict[str, Any], status: dict[str, Any], expected: phases.RestorePlan) -> None:
    assert phases.restore_plan(job(spec, **status)) == expected


@pytest.mark.parametrize(
    ("attempts", "delay"), [(0, 0.0), (1, 5.0), (2, 10.0), (3, 20.0), (7, 300.0), (50, 300.0)]
)
def test_backoff_delay_doubles_up_to_the_cap(attempts: int, delay: float) -> None:
    assert phases.backoff_delay(attempts) == delay


@pytest.mark.parametrize(
    ("spec", "last_used", "now", "idle"),
    [
        ({"idleTimeoutSeconds": 60}, 1000.0, 1059.0, False),
        ({"idleTimeoutSeconds": 60}, 1000.0, 1060.0, True),
        ({}, 0.0, 10**9, False),
        ({"idleTimeoutSeconds": 60}, None, 10**9, False),
        ({"idleTimeoutSeconds": 60, "mode": "training", "training": {"dataset": "d"}}, 0.0, 10**9, False),
    ],
)
def test_idle_expired(spec: dict[str, Any], last_used: float | None, now: float, idle: bool) -> None:
    assert phases.idle_expired(job(spec), last_used=last_used, now=now) is idle


@pytest.mark.parametrize(("last", "now", "due"), [(None, 0.0, True), (10.0, 14.9, False), (10.0, 15.0, True)])
def test_progress_writes_are_rate_bounded(last: float | None, now: float, due: bool) -> None:
    assert phases.progress_due(last, now, 5.0) is due


def test_runtime_lost_counts_an_attempt_and_says_which_checkpoint_and_steps_lost() -> None:
    lost = job(
        {},
        phase=Phase.RUNNING,
        runtime=RT,
        attempts=1,
        progress=Progress(step=27, loss=1.5),
        latest_checkpoint=Checkpoint(path="tinker://ns.j/weights/step-20", step=20),
    )
    status, message = transitions.runtime_lost(lost, NOW)
    assert status.phase == Phase.PENDING and status.runtime is None and status.attempts == 2
    assert message == "runtime rt-0 lost at step 27: restoring from tinker://ns.j/weights/step-20 (step 20); 7 step(s) lost"
    restored = {c.type: c for c in status.conditions}[phases.RESTORED]
    assert (restored.status, restored.reason, restored.message) == ("False", "RuntimeLost", message)


def test_runtime_lost_without_checkpoint_says_it_starts_fresh() -> None:
    _, message = transitions.runtime_lost(job({}, phase=Phase.RUNNING, runtime=RT, progress=Progress(step=4)), NOW)
    assert "fresh adapter; 4 step(s) lost" in message


def test_running_after_restore_rewinds_progress_to_the_checkpoint() -> None:
    before = job({}, progress=Progress(step=27), latest_checkpoint=Checkpoint(path="p", step=20))
    status = transitions.running(before.status, phases.restore_plan(before), NOW, generation=3)
    assert (status.phase, status.progress.step, status.observed_generation) == (Phase.RUNNING, 20, 3)
    assert status.start_time == phases.iso(NOW)


def test_dispatch_failed_sets_a_backoff_and_goes_pending() -> None:
    status = transitions.dispatch_failed(LoRAJobStatus(phase=Phase.SCHEDULED, runtime=RT, attempts=1), "boom", NOW)
    assert (status.phase, status.attempts, status.runtime) == (Phase.PENDING, 2, None)
    assert status.next_attempt_time == phases.iso(NOW + timedelta(seconds=10))
    assert "boom" in (status.message or "")


@pytest.mark.parametrize(
    ("transition", "phase"),
    [
        (lambda s: transitions.unschedulable(s, "NoRuntime", "none", NOW), Phase.PENDING),
        (lambda s: transitions.scheduled(s, RT, "placed", NOW), Phase.SCHEDULED),
        (lambda s: transitions.suspended(s, Checkpoint(path="p", step=3), NOW), Phase.SUSPENDED),
        (lambda s: transitions.resumed(s), Phase.PENDING),
        (lambda s: transitions.finished(s, Phase.SUCCEEDED, "Done", "ok", NOW), Phase.SUCCEEDED),
        (lambda s: transitions.finished(s, Phase.FAILED, "BackoffLimitExceeded", "no", NOW), Phase.FAILED),
    ],
)
def test_transitions_set_the_phase(transition: Any, phase: Phase) -> None:
    assert transition(LoRAJobStatus(phase=Phase.RUNNING, runtime=RT)).phase == phase


def test_finished_starts_the_ttl_clock_and_frees_the_runtime() -> None:
    status = transitions.finished(LoRAJobStatus(phase=Phase.RUNNING, runtime=RT), Phase.SUCCEEDED, "Done", "ok", NOW)
    assert status.completion_time == phases.iso(NOW) and status.runtime is None


def test_condition_transition_time_moves_only_when_its_status_changes() -> None:
    first = transitions.set_condition([], "Scheduled", "False", "NoRuntime", "a", NOW)
    later = NOW + timedelta(minutes=1)
    same = transitions.set_condition(first, "Scheduled", "False", "NoCapacity", "b", later)
    flipped = transitions.set_condition(same, "Scheduled", "True", "Scheduled", "c", later)
    assert same[0].last_transition_time == phases.iso(NOW) and same[0].reason == "NoCapacity"
    assert flipped[0].last_transition_time == phases.iso(later)
    assert len(flipped) == 1


@pytest.mark.parametrize(
    ("checkpoint", "latest_step"),
    [(None, 10), (Checkpoint(path="new", step=15), 15), (Checkpoint(path="old", step=5), 10)],
)
def test_progressed_keeps_the_newest_checkpoint(checkpoint: Checkpoint | None, latest_step: int) -> None:
    old = LoRAJobStatus(latest_checkpoint=Checkpoint(path="p", step=10))
    new = transitions.progressed(old, Progress(step=16, loss=0.5, tokens=900), checkpoint)
    assert new.latest_checkpoint is not None and new.latest_checkpoint.step == latest_step
    assert new.progress.step == 16


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        (LoRAJobStatus(), LoRAJobStatus(), {}),
        (LoRAJobStatus(runtime=RT), LoRAJobStatus(), {"runtime": None}),
        (LoRAJobStatus(), LoRAJobStatus(phase=Phase.RUNNING), {"phase": "Running"}),
        (
            LoRAJobStatus(progress=Progress(step=1)),
            LoRAJobStatus(progress=Progress(step=2, loss=0.1)),
            {"progress": {"step": 2, "loss": 0.1, "tokens": 0}},
        ),
    ],
)
def test_status_patch(old: LoRAJobStatus, new: LoRAJobStatus, patch: dict[str, Any]) -> None:
    assert transitions.status_patch(old, new) == patch


STARTED = ago(3600)
OWN = Checkpoint(path="tinker://ns.j/weights/step-20", step=20, time=ago(600))


def saved(name: str, step: int, seconds_ago: float) -> Checkpoint:
    return Checkpoint(path=f"tinker://ns.j/weights/{name}", step=step, time=ago(seconds_ago))


@pytest.mark.parametrize(
    ("status", "stored", "expected"),
    [
        # a user's save newer (by step) than the operator's checkpoint wins; losses count from it
        ({"latest_checkpoint": OWN}, [saved("mine", 25, 60)], phases.RestorePlan("tinker://ns.j/weights/mine", 25, True, 2, "checkpoint")),
        # an older save loses to the operator's checkpoint
        ({"latest_checkpoint": OWN}, [saved("old", 10, 60)], phases.RestorePlan(OWN.path, 20, True, 7, "checkpoint")),
        # the same step: the later one; a tie in both keeps the operator's own
        ({"latest_checkpoint": OWN}, [saved("same", 20, 60)], phases.RestorePlan("tinker://ns.j/weights/same", 20, True, 7, "checkpoint")),
        ({"latest_checkpoint": OWN}, [saved("tie", 20, 600)], phases.RestorePlan(OWN.path, 20, True, 7, "checkpoint")),
        # no checkpoint of its own: the newest of the saves
        ({}, [saved("a", 5, 90), saved("b", 12, 80), saved("c", 12, 70)], phases.RestorePlan("tinker://ns.j/weights/c", 12, True, 15, "checkpoint")),
        # saves from before the job first ran belong to an earlier job of that name
        ({}, [saved("stale", 99, 7200)], phases.RestorePlan(None, 0, False, 27, "fresh")),
        # a save beats spec.resumeFrom, which only seeds the first dispatch
        ({"resume": True}, [saved("mine", 3, 60)], phases.RestorePlan("tinker://ns.j/weights/mine", 3, True, 24, "checkpoint")),
        # the adapter already went past no state: nothing lost beyond zero
        ({"step": 2}, [saved("ahead", 5, 60)], phases.RestorePlan("tinker://ns.j/weights/ahead", 5, True, 0, "checkpoint")),
    ],
)
def test_restore_plan_considers_the_runs_saved_states(
    status: dict[str, Any], stored: list[Checkpoint], expected: phases.RestorePlan
) -> None:
    spec = {"resumeFrom": {"path": "tinker://r/weights/a"}} if status.pop("resume", False) else {}
    step = status.pop("step", 27)
    j = job(spec, phase=Phase.RUNNING, runtime=RT, start_time=STARTED, progress=Progress(step=step), **status)
    assert phases.restore_plan(j, stored) == expected


def test_saved_states_are_ignored_before_the_job_first_ran() -> None:
    fresh = job({}, progress=Progress(step=0))
    assert phases.restore_plan(fresh, [saved("any", 9, 1)]) == phases.RestorePlan(None, 0, False, 0, "fresh")


def test_runtime_lost_restores_a_users_save_and_records_it_as_the_latest_checkpoint() -> None:
    lost = job({}, phase=Phase.RUNNING, runtime=RT, start_time=STARTED, progress=Progress(step=9), latest_checkpoint=None)
    status, message = transitions.runtime_lost(lost, NOW, [saved("mine", 7, 30)])
    assert message == "runtime rt-0 lost at step 9: restoring from tinker://ns.j/weights/mine (step 7); 2 step(s) lost"
    assert status.latest_checkpoint == saved("mine", 7, 30)
    after = job({}, **{k: v for k, v in status.model_dump().items() if k != "conditions"})
    assert phases.restore_plan(after).source == "tinker://ns.j/weights/mine"


@pytest.mark.parametrize(
    ("checkpoint", "error", "latest", "message", "step"),
    [
        (Checkpoint(path="tinker://ns.j/weights/suspend-step-9", step=9), None, OWN,
         "suspended at step 9; state saved at tinker://ns.j/weights/suspend-step-9", 9),
        (None, "disk full", OWN,
         "suspended without saving (disk full); resuming from tinker://ns.j/weights/step-20 (step 20) loses 7 step(s)", 27),
        (None, "disk full", None, "suspended without saving (disk full); resuming from a fresh adapter loses 27 step(s)", 27),
        (None, None, OWN, "suspended", 27),
    ],
)
def test_suspended_says_what_was_saved_or_what_a_resume_loses(
    checkpoint: Checkpoint | None, error: str | None, latest: Checkpoint | None, message: str, step: int
) -> None:
    before = LoRAJobStatus(phase=Phase.RUNNING, runtime=RT, progress=Progress(step=27), latest_checkpoint=latest)
    status = transitions.suspended(before, checkpoint, NOW, save_error=error)
    assert (status.phase, status.runtime, status.message, status.progress.step) == (Phase.SUSPENDED, None, message, step)
    assert status.latest_checkpoint == (checkpoint or latest)


def test_running_records_a_restored_save_as_the_latest_checkpoint() -> None:
    before = job({}, start_time=STARTED, progress=Progress(step=9), latest_checkpoint=OWN)
    status = transitions.running(before.status, phases.restore_plan(before, [saved("mine", 25, 30)]), NOW, generation=1)
    assert status.latest_checkpoint == saved("mine", 25, 30) and status.progress.step == 25


@pytest.mark.parametrize(
    ("current", "info", "expected"),
    [
        (Progress(), {"step": 3, "loss": 1.25}, Progress(step=3, loss=1.25)),
        (Progress(step=3, loss=1.25), {"step": 3, "loss": 1.25}, None),
        (Progress(step=3, loss=1.25), {"step": 3, "loss": 0.5}, Progress(step=3, loss=0.5)),
        (Progress(step=3), {"step": 4, "loss": None}, Progress(step=4)),
        (Progress(step=3, tokens=9), {"step": True, "loss": "low"}, None),
        (Progress(), {}, None),
    ],
)
def test_sdk_driven_progress_takes_the_runtimes_step_and_loss(current, info, expected) -> None:
    assert phases.interactive_progress(current, info) == expected


def test_the_final_failure_names_the_last_attempts_cause() -> None:
    status = LoRAJobStatus()
    for _ in range(4):
        status = transitions.dispatch_failed(status, "CUDA out of memory on rt-0", NOW)
    decision = phases.decide(job({"backoffLimit": 3}, **status.dump()), runtime_ready=False, now=NOW)
    assert decision.action == Action.FAIL
    assert decision.message == "4 attempts, more than backoffLimit 3; the last: attempt 4 failed: CUDA out of memory on rt-0"
    failed = transitions.finished(status, Phase.FAILED, decision.reason, decision.message, NOW)
    ready = next(c for c in failed.conditions if c.type == phases.READY)
    assert (ready.reason, ready.message) == ("BackoffLimitExceeded", decision.message)


def test_a_lost_runtime_is_the_last_cause_too() -> None:
    lost = job({"backoffLimit": 0}, phase=Phase.RUNNING, runtime=RT, progress=Progress(step=7))
    status, _ = transitions.runtime_lost(lost, NOW, [])
    decision = phases.decide(job({"backoffLimit": 0}, **status.dump()), runtime_ready=False, now=NOW)
    assert decision.action == Action.FAIL and "the last: runtime rt-0 lost at step 7" in decision.message
