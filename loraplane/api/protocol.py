"""JSON request bodies of the Tinker protocol, as the gateway accepts them.

Callers: the route modules, which declare these as FastAPI body parameters; a body that does not
fit becomes a 400 naming the field (`loraplane.core.errors.invalid_input`). Unknown fields are ignored: newer
SDKs add fields, and the SDK's own models are the strict side. Field meanings are in
tinker-protocol.md section 3; responses are plain dicts built by the gateway. The parameter
models (`lora_config`, `adam_params`, `sampling_params`) are `loraplane.core.params`' own, with
its defaults and ranges, only lenient about unknown fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraplane.core import params

#: The longest checkpoint TTL: a hundred years (past it, "keep forever" is what a client means).
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600
#: The largest model_seq_id / sampling_session_seq_id an id can spell (`ids.MODEL_RE`, `ids.SAMPLER_RE`).
MODEL_SEQ_MAX, SAMPLER_SEQ_MAX = 10**9 - 1, 10**12 - 1


class _Body(BaseModel):
    # Python's JSON reader takes NaN and Infinity: no float field of the protocol means either.
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), allow_inf_nan=False)


class SdkVersion(_Body):
    sdk_version: str | None = None


class CreateSession(_Body):
    tags: list[str] = Field(default_factory=list)
    user_metadata: dict[str, Any] = Field(default_factory=dict)
    sdk_version: str | None = None
    project_id: str | None = None
    display_name: str | None = None


class SessionRefBody(_Body):
    session_id: str


class FinishSession(_Body):
    reason: dict[str, Any] | None = None
    detail: str | None = None


class LoraConfig(params.LoraConfig):
    """Tinker's `lora_config` (it has no alpha: a client that sends one sets it, the rest get 32)."""

    model_config = ConfigDict(extra="ignore")


class OptimizerConfig(_Body):
    type: str = "adamw"


class CreateModel(_Body):
    session_id: str
    model_seq_id: int = Field(ge=0, le=MODEL_SEQ_MAX)
    base_model: str = Field(min_length=1)
    user_metadata: dict[str, Any] | None = None
    lora_config: LoraConfig = Field(default_factory=LoraConfig)
    optimizer_config: OptimizerConfig = Field(default_factory=OptimizerConfig)


class ModelRef(_Body):
    model_id: str


class AdamParams(params.AdamParams):
    model_config = ConfigDict(extra="ignore")


class OptimStep(_Body):
    model_id: str
    seq_id: int | None = None
    adam_params: AdamParams | None = None
    optimizer_params: dict[str, Any] | None = None


class SaveWeights(_Body):
    model_id: str
    path: str | None = None
    seq_id: int | None = None
    ttl_seconds: int | None = Field(None, ge=0, le=MAX_TTL_SECONDS)
    overwrite: bool = False
    user_metadata: dict[str, str] | None = None


class SaveWeightsForSampler(_Body):
    model_id: str
    path: str | None = None
    sampling_session_seq_id: int | None = Field(None, ge=0, le=SAMPLER_SEQ_MAX)
    kind: Literal["snapshot", "inflight"] = "snapshot"
    seq_id: int | None = None
    ttl_seconds: int | None = Field(None, ge=0, le=MAX_TTL_SECONDS)
    user_metadata: dict[str, str] | None = None


class LoadWeights(_Body):
    """Both forms: on an existing model (model_id + seq_id) or creating one (session_id + model_seq_id)."""

    model_id: str | None = None
    seq_id: int | None = None
    session_id: str | None = None
    model_seq_id: int | None = Field(None, ge=0, le=MODEL_SEQ_MAX)
    path: str
    optimizer: bool = False
    base_model: str | None = None
    user_metadata: dict[str, Any] | None = None


class CreateSamplingSession(_Body):
    session_id: str
    sampling_session_seq_id: int = Field(ge=0, le=SAMPLER_SEQ_MAX)
    base_model: str | None = None
    model_path: str | None = None


class SamplingParams(params.SamplingParams):
    model_config = ConfigDict(extra="ignore")


class Sample(_Body):
    num_samples: int = Field(1, ge=1, le=128)
    prompt: dict[str, Any]
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    sampling_session_id: str
    seq_id: int | None = None
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = Field(0, ge=0)
    topk_sample_logprobs: int = Field(0, ge=0)
    prompt_alt_tokens_k: int = Field(0, ge=0)
    #: the SDK's JSON TensorData of int64 ids; the runtime checks it against the prompt
    target_prompt_logprobs: dict[str, Any] | None = None
    prompt_logprobs_last_n: int | None = Field(None, ge=1)
    record_stability_info: bool | None = None


class RetrieveFuture(_Body):
    request_id: str
    allow_metadata_only: bool = False


class WeightsInfo(_Body):
    tinker_path: str


class CheckpointTtl(_Body):
    ttl_seconds: int | None = Field(None, ge=0, le=MAX_TTL_SECONDS)
