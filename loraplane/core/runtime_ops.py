"""What the gateway and the operator ask of a runtime: the ops' names, the adapter ids they name,
and the JSON bodies of the runtime's internal API (docs/runtime-api.md).

Callers: the runtime's API (`runtime/api.py`, `runtime/wire.py`) parses these bodies, its client
(`clients/runtime.py`) sends them, the gateway names its futures by `OpKind`, and every
component that addresses an adapter on a runtime gets its id here.

Design notes
============
* One vocabulary of op names: the gateway's request ids, the runtime's executor and its metrics
  all say `OpKind`. The control-plane kinds are the gateway's alone (a LoRAJob, not a runtime,
  answers them).
* Adapter ids. A training run's adapter is named after its LoRAJob (`job_adapter_id`), which is
  what the operator or the embedded control plane creates it under; callers ask
  `ControlPlane.adapter_id`, never compute it. A named sampler checkpoint is loaded under an id
  derived from its path (`checkpoint_adapter_id`), so every gateway replica loads it once; a live
  snapshot of a training run under its sampler's id (`snapshot_adapter_id`).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Literal

from pydantic import Field

from loraplane.core.params import AdamParams, LoraConfig, Params, SamplingParams, TrainingSpec


class OpKind(StrEnum):
    """An operation of a training run or sampler, as futures, executor ops and metrics name it."""

    # asked of a runtime
    FORWARD = "forward"
    FORWARD_BACKWARD = "forward_backward"
    OPTIM_STEP = "optim_step"
    SAVE_STATE = "save_state"
    SAVE_SAMPLER = "save_sampler"
    SAVE_EXTERNAL = "save_external"
    SNAPSHOT = "snapshot"
    LOAD_STATE = "load_state"
    SAMPLE = "sample"
    # answered by the control plane (the gateway's futures only)
    CREATE_MODEL = "create_model"
    CREATE_FROM_STATE = "create_from_state"
    UNLOAD_MODEL = "unload_model"


#: Kinds the runtime's scheduler gathers into one batched forward/backward.
FORWARD_KINDS = frozenset({OpKind.FORWARD, OpKind.FORWARD_BACKWARD})
#: Kinds a JSON body of `POST /v1/adapters/{id}/ops` may ask for.
JSON_OP_KINDS = (OpKind.OPTIM_STEP, OpKind.SAVE_STATE, OpKind.SAVE_SAMPLER, OpKind.SAVE_EXTERNAL,
                 OpKind.SNAPSHOT, OpKind.LOAD_STATE)


# ---- adapter ids -----------------------------------------------------------------------------

def job_adapter_id(namespace: str | None, job_name: str) -> str:
    """The runtime adapter id of a LoRAJob: `<namespace>.<name>`, unique across namespaces that share
    a runtime (single-node jobs live in namespace `default`); the bare name without one. Pure;
    called by the control planes (`ControlPlane.adapter_id`) and the operator."""
    return f"{namespace}.{job_name}" if namespace else job_name


def checkpoint_adapter_id(tinker_path: str) -> str:
    """The runtime adapter id under which a saved sampler checkpoint is loaded: stable per path. Pure."""
    return "ckpt-" + hashlib.sha256(tinker_path.encode()).hexdigest()[:20]


def snapshot_adapter_id(sampler_id: str) -> str:
    """The runtime adapter id of a training run's live snapshot: its Tinker sampler id without ':'. Pure."""
    return sampler_id.replace(":", "-")


# ---- request bodies --------------------------------------------------------------------------

class CreateAdapterBody(LoraConfig):
    """`POST /v1/adapters`: the adapter's id and shape, and the first seq_id it expects."""

    adapter_id: str = Field(min_length=1, max_length=253, pattern=r"^[^/]+$")
    #: None: learn the seq_id from the first op (a restored adapter whose client is mid-run)
    expect_seq: int | None = 1


class LoadAdapterBody(Params):
    """`POST /v1/adapters/{id}/load`: a saved state to load (creating the adapter when missing)."""

    source: str = Field(min_length=1)
    optimizer: bool = True
    expect_seq: int | None = 1


class OpBody(Params):
    """One JSON op of `POST /v1/adapters/{id}/ops`; which fields apply depends on `op`."""

    seq_id: int | None = None
    op: Literal[tuple(kind.value for kind in JSON_OP_KINDS)]  # type: ignore[valid-type]
    adam_params: AdamParams | None = None
    dest: str | None = None
    source: str | None = None
    optimizer: bool = True
    sampler_id: str | None = None
    #: save_external: age recipients to encrypt every exported file to.
    age_recipients: list[str] | None = None


class TensorDataBody(Params):
    """The SDK's JSON `TensorData`: flat `data`, a `shape`, optionally a sparse CSR layout."""

    data: list[int]
    dtype: Literal["int64"]
    shape: list[int] | None = None
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None


class SampleBody(Params):
    """`POST /v1/sample`."""

    adapter_id: str | None = None
    #: who may read the result (`GET /v1/results/{id}?owner=`); the gateway names the sampler
    owner: str | None = Field(None, max_length=253)
    #: whose request it is: the decode batch admits tenants fairly
    tenant: str | None = Field(None, max_length=63)
    prompt_tokens: list[int] = Field(min_length=1)
    num_samples: int = Field(1, ge=1, le=128)
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    prompt_logprobs: bool = False
    prompt_logprobs_last_n: int | None = Field(None, ge=1)
    topk_prompt_logprobs: int = Field(0, ge=0)
    topk_sample_logprobs: int = Field(0, ge=0)
    target_prompt_logprobs: TensorDataBody | None = None
    prompt_alt_tokens_k: int = Field(0, ge=0)
    #: Sequence ids under which to record every sample for stable_reinforce (one per sample).
    record_sequence_ids: list[str] | None = None
    #: Store folder where the recorded sequences are kept too (the session's, from the gateway).
    record_url: str | None = None


class TrainBody(TrainingSpec):
    """`POST /v1/adapters/{id}/train`: the run as the LoRAJob describes it, and where it goes in the
    store (the operator turns `output_name` into `output`)."""

    #: store folder of the periodic checkpoints (`<prefix>/step-<n>`); None = none
    checkpoint_prefix: str | None = None
    #: store URL of the final checkpoint; None = none
    output: str | None = None
    #: the step to start from (a run restored from a checkpoint)
    start_step: int = Field(0, ge=0)
