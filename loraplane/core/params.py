"""The parameters every component passes along: an adapter's shape, an optimizer step, a sample, a run.

Callers: the LoRAJob model (`models/v1alpha1/lorajob.py`, hence the CRD), the gateway's request
models (`api/protocol.py`), the runtime's API bodies (`runtime/wire.py`, `runtime/training.py`)
and the runtime client. Each concept has one model here, with one set of defaults and the ranges
that hold everywhere; a limit that depends on the deployment (the largest rank a runtime holds, the
size of a sample) is a setting, checked by whoever owns it, never a constant in a schema.

Design notes
============
* Field names are snake_case, as the Tinker wire and the runtime's API spell them. The two models
  that the LoRAJob embeds (`LoraConfig`, `TrainingSpec`) also read and, with `by_alias`, write
  camelCase, as Kubernetes objects spell them.
* Unknown fields are refused (a misspelt option is a 400 naming it, not silently ignored). The
  gateway, which must admit fields that newer SDKs add, subclasses these with `extra="ignore"`.
* Non-finite floats are refused: no field here means NaN or infinity.
* LoRA alpha defaults to 32 whatever the rank, as on Tinker: the update is scaled by alpha/rank, so
  learning rates tuned there (the cookbook's LoRA rates assume this 1/rank scaling) carry over.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

#: Seeds torch's generators take: any 64-bit value, signed or not.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
#: LoRA alpha when none is given (Tinker's; see the module notes).
DEFAULT_ALPHA = 32  # an integer, so that the CRD spells its default the same in every YAML tool
#: New tokens per sample when a request leaves `max_tokens` unset.
DEFAULT_MAX_TOKENS = 64
#: Losses a declarative run can train with from the rows of a dataset (`TrainingSpec.loss`).
DeclarativeLoss = Literal["cross_entropy", "importance_sampling"]


class Params(BaseModel):
    """Base of the snake_case parameter models: strict, finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ResourceParams(Params):
    """Base of the models a LoRAJob embeds: also camelCase, as the Kubernetes object spells them."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True)


class LoraConfig(ResourceParams):
    """Which adapter to build: Tinker's `lora_config` plus alpha. The largest rank is the runtime's
    setting (`LORAPLANE_RUNTIME__MAX_LORA_RANK`), checked where the adapter is created."""

    rank: int = Field(32, ge=1, description="LoRA rank r (at most the runtime's max_lora_rank, 512 by default).")
    alpha: float = Field(
        DEFAULT_ALPHA, gt=0,
        description="LoRA alpha: the update is scaled by alpha/rank. Default 32 whatever the rank, as on "
                    "Tinker, so that learning rates tuned there carry over.",
    )
    seed: int | None = Field(None, ge=0, description="Seed of the adapter's initialisation (below 2^64).")
    train_attn: bool = Field(True, description="Adapt the attention projections (q, k, v, o).")
    train_mlp: bool = Field(True, description="Adapt the MLP projections (gate, up, down).")
    train_unembed: bool = Field(True, description="Adapt the unembedding (lm_head).")

    @field_validator("seed")
    @classmethod
    def _seed_fits(cls, seed: int | None) -> int | None:
        # Checked here rather than as a schema maximum: past 2^53 YAML tools turn numbers into floats,
        # so the CRD would not carry the bound exactly (and a Kubernetes integer stops at 2^63 anyway).
        if seed is not None and seed > SEED_MAX:
            raise ValueError(f"must be below 2^64, got {seed}")
        return seed

    @field_validator("train_unembed")
    @classmethod
    def _adapts_something(cls, train_unembed: bool, info: ValidationInfo) -> bool:
        # the last of the three: the error names it, and the others are known by now
        if not (train_unembed or info.data.get("train_attn") or info.data.get("train_mlp")):
            raise ValueError("at least one of train_attn, train_mlp and train_unembed must be true")
        return train_unembed


class AdamParams(Params):
    """Tinker's `AdamParams`: AdamW with decoupled weight decay; `grad_clip_norm` 0 = no clipping."""

    learning_rate: float = Field(1e-4, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-12, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip_norm: float = Field(0.0, ge=0)


class SamplingParams(Params):
    """Tinker's `SamplingParams`. The size of a request (`num_samples` x `max_tokens`) is the
    gateway's setting `max_sample_tokens`; the model's length is the runtime's to check."""

    max_tokens: int | None = Field(None, ge=0, description=f"New tokens per sample; unset = {DEFAULT_MAX_TOKENS}.")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | list[int] | None = None
    temperature: float = Field(1.0, ge=0)
    top_k: int = -1
    top_p: float = Field(1.0, gt=0, le=1)

    @property
    def new_tokens(self) -> int:
        """`max_tokens`, or the default when unset."""
        return DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens


class TrainingSpec(ResourceParams):
    """A declarative fine-tuning run: `spec.training` of a LoRAJob, and the run the runtime trains."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!(has(self.steps) && has(self.epochs))", "message": "set steps or epochs, not both"}
            ]
        },
    )

    dataset: str = Field(min_length=1,
                         description="Artifact-store URL of a JSONL file: prompt/completion pairs or chat messages.")
    format: Literal["auto", "prompt_completion", "chat"] = Field("auto", description="Row format of the dataset.")
    steps: int | None = Field(None, ge=1, description="Optimizer steps to run (exclusive with epochs).")
    epochs: float | None = Field(None, gt=0, description="Passes over the dataset (exclusive with steps; default 1).")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    max_seq_len: int = Field(2048, ge=2, description="Examples are truncated to this many tokens.")
    loss: DeclarativeLoss = Field(
        "cross_entropy",
        description="Training loss. cross_entropy: the completion tokens' likelihood. importance_sampling: "
                    "each row's `advantage` (a number, default 1) times its completion tokens' "
                    "log-likelihood ratio to the adapter's own before the step (on-policy).",
    )
    checkpoint_every: int = Field(0, ge=0, description="Save a training state every N steps (0 = only at the end).")
    output_name: str = Field(
        "final", pattern=r"^[A-Za-z0-9._-]{1,128}$", description="Name of the final checkpoint (no '/')."
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingSpec:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("set steps or epochs, not both")
        return self
