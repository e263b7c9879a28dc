"""Where a job's run lives in the artifact store, and what the runtime is asked to train.

Callers: `reconciling` (dispatch, follow, suspend). Pure functions over the job and the store URL
(`loraplane.core.artifacts` holds the layout), so that status shows the same tinker:// paths the
gateway hands to Tinker users.
"""

from __future__ import annotations

from typing import Any

from loraplane.core import artifacts
from loraplane.core.models.v1alpha1.lorajob import LoRAJob
from loraplane.core.models.v1alpha1.lorajob import adapter_id as make_adapter_id


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


def train_request(job: LoRAJob, store: str, start_step: int) -> dict[str, Any]:
    """The body of POST /v1/adapters/{id}/train for a declarative job. Pure."""
    spec = job.spec.training
    assert spec is not None
    run = run_id(job)
    body: dict[str, Any] = {
        "dataset": spec.dataset,
        "format": spec.format,
        "batch_size": spec.batch_size,
        "learning_rate": spec.learning_rate,
        "max_seq_len": spec.max_seq_len,
        "checkpoint_every": spec.checkpoint_every,
        "checkpoint_prefix": artifacts.join(artifacts.run_url(store, run), "weights"),
        "output": artifacts.checkpoint_url(store, artifacts.TinkerPath(run, "weights", spec.output_name)),
        "start_step": start_step,
    }
    if spec.steps is not None:
        body["steps"] = spec.steps
    if spec.epochs is not None:
        body["epochs"] = spec.epochs
    return body
