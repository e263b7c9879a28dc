"""Where a job's run lives in the artifact store, and what the runtime is asked to train.

Callers: `reconciling` (dispatch, follow, suspend, restore). Pure functions over the job and the
store URL (`loraplane.core.artifacts` holds the layout), so that status shows the same tinker://
paths the gateway hands to Tinker users.

Design notes
============
A user's saves (Tinker save_state through the gateway) land in the run's `weights/` folder with a
checkpoint.json record that the gateway writes once the files are complete; the operator never
hears of them otherwise. `saved_states` turns what the store holds into restore candidates, so
that a lost runtime restores the newest state whoever saved it (`phases.restore_plan` chooses).

A declarative run has no gateway in its path, so the operator writes what the gateway would have:
the run's record when the job is dispatched (its tenant owns the run), and each training state's
record once the runtime reports it complete. The Tinker API then sees the job as a training run
of that tenant: `tinker checkpoint list` lists its states and the SDK loads its final one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from loraplane.core import artifacts
from loraplane.core.models.v1alpha1.lorajob import Checkpoint, LoRAJob
from loraplane.core.runtime_ops import TrainBody
from loraplane.core.runtime_ops import job_adapter_id as make_adapter_id


def checkpoint_source_url(store: str, path: str) -> str:
    """A checkpoint path as the runtime loads it: tinker:// mapped into the store. Pure."""
    if path.startswith(artifacts.TINKER_SCHEME):
        return artifacts.checkpoint_url(store, artifacts.parse_tinker_path(path, field="resumeFrom.path"))
    return path


def checkpoint_path(store: str, url: str) -> str:
    """A store URL as status shows it: tinker:// when it is a run's checkpoint. Pure."""
    tinker = artifacts.tinker_path_for_url(store, url)
    return str(tinker) if tinker is not None else url


def run_id(job: LoRAJob) -> str:
    """The training run whose folder holds the job's checkpoints. Pure."""
    if job.spec.session is not None:
        return job.spec.session.model_id
    return make_adapter_id(job.metadata.namespace, job.metadata.name)


def train_request(job: LoRAJob, store: str, start_step: int) -> TrainBody:
    """The body of POST /v1/adapters/{id}/train for a declarative job: its whole `spec.training`,
    and where the run's checkpoints go. Pure."""
    spec = job.spec.training
    assert spec is not None
    run = run_id(job)
    return TrainBody(
        **spec.model_dump(),
        checkpoint_prefix=artifacts.join(artifacts.run_url(store, run), "weights"),
        output=artifacts.checkpoint_url(store, artifacts.TinkerPath(run, "weights", spec.output_name)),
        start_step=start_step,
    )


def saved_states(
    entries: Iterable[tuple[artifacts.TinkerPath, Mapping[str, Any] | None]], now: str
) -> list[Checkpoint]:
    """Restore candidates among a run's checkpoints and their records (`now` ISO-8601). Pure.

    Called by `reconciling` after listing the store. Kept: training states (`weights/`) whose
    record is complete (a step and a time) and not expired. Sampler snapshots hold no optimizer
    state and a record still being written is no state yet, so neither is ever restored.
    """
    out = []
    for path, record in entries:
        if path.segment != "weights" or not record or artifacts.is_expired(dict(record), now):
            continue
        step, saved_at = record.get("step"), record.get("time")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not isinstance(saved_at, str):
            continue
        out.append(Checkpoint(path=str(path), step=step, time=saved_at))
    return out


def suspend_path(job: LoRAJob, step: int) -> artifacts.TinkerPath:
    """Where a suspend saves the adapter: `weights/suspend-step-<n>` of the job's run. Pure.

    `step` is the adapter's step when the suspend begins; with a declarative run going, an
    optimizer step already queued can land before the save, so the state's record (and status)
    carries the step the runtime reports, which may be one more.
    """
    return artifacts.TinkerPath(run_id(job), "weights", f"suspend-step-{step}")


def needs_new_run(run: Mapping[str, Any] | None, *, adapter_was_placed: bool) -> bool:
    """Whether a dispatch starts a training run on the runtime. Pure; called by `reconciling.dispatch`.

    The runtime keeps a run's status after it ends, under the adapter id, which a job recreated
    under the same name shares. A run that outlived its adapter (deleted by a suspend, by the end
    of an earlier job of that name) is not this adapter's: when the dispatch has just created or
    loaded the adapter, only a run still going counts. When the adapter was already there (an
    operator restarted mid-dispatch), a run going or done is this job's and a failed one restarts.
    """
    if run is None:
        return True
    if adapter_was_placed:
        return run.get("state") != "running"
    return run.get("state") == "failed"


def run_record(job: LoRAJob, now: str) -> dict[str, Any]:
    """The run.json of a declarative job's run, owned by the job's tenant. Pure; `now` ISO-8601."""
    return artifacts.build_run_record(
        run_id=run_id(job), tenant=job.spec.tenant, base_model=job.spec.base_model,
        lora=job.spec.lora.model_dump(exclude_none=True), now=now,
        user_metadata={"lorajob": f"{job.metadata.namespace or 'default'}/{job.metadata.name}"},
    )


_STEP_STATE = re.compile(r"^step-(\d+)$")


def complete_states(names: Iterable[str], *, last_step: int, final: str | None) -> list[tuple[str, int | None]]:
    """(name, step) of a declarative run's training states that are complete. Pure.

    The runtime saves a run's states one after another, so `step-<n>` is complete once the run
    reports a checkpoint at step `last_step` >= n; the final state is complete when `final` names
    it (the run succeeded). Folders of other names (a user's or a suspend's) are not the run's.
    """
    out: list[tuple[str, int | None]] = []
    for name in names:
        match = _STEP_STATE.match(name)
        if match and int(match.group(1)) <= last_step:
            out.append((name, int(match.group(1))))
        elif final is not None and name == final:
            out.append((name, None))
    return out
