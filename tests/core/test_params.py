"""The shared parameter models: one set of defaults and ranges, and the one translator of their errors."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from loraplane.core import errors, params, runtime_ops
from loraplane.core.models.v1alpha1 import LoRAJobSpec


def test_alpha_defaults_to_32_whatever_the_rank() -> None:
    assert params.LoraConfig(rank=4).alpha == params.LoraConfig(rank=256).alpha == 32


def test_the_job_and_the_runtime_body_share_the_training_defaults() -> None:
    spec = LoRAJobSpec.model_validate({"baseModel": "m", "tenant": "t", "mode": "training",
                                       "training": {"dataset": "file:///d"}})
    assert spec.training is not None
    body = runtime_ops.TrainBody(dataset="file:///d")
    assert {k: getattr(body, k) for k in params.TrainingSpec.model_fields} == spec.training.model_dump()
    assert body.max_seq_len == 2048 and body.loss == "cross_entropy"


@pytest.mark.parametrize(
    ("values", "camel"),
    [({"train_attn": False}, {"trainAttn": False}), ({"seed": 3, "train_unembed": False}, {"seed": 3, "trainUnembed": False})],
)
def test_lora_config_reads_both_spellings_and_writes_camel_case_for_kubernetes(
    values: dict[str, Any], camel: dict[str, Any]
) -> None:
    assert params.LoraConfig.model_validate(camel) == params.LoraConfig.model_validate(values)
    assert params.LoraConfig(**values).model_dump(by_alias=True, exclude_defaults=True) == camel


@pytest.mark.parametrize(
    ("model", "values", "field"),
    [
        (params.LoraConfig, {"rank": 0}, "rank"),
        (params.LoraConfig, {"alpha": 0}, "alpha"),
        (params.LoraConfig, {"seed": 2**64}, "seed"),
        (params.LoraConfig, {"train_attn": False, "train_mlp": False, "train_unembed": False}, "train_unembed"),
        (params.LoraConfig, {"dropout": 0.1}, "dropout"),
        (params.AdamParams, {"beta1": 1.0}, "beta1"),
        (params.AdamParams, {"learning_rate": float("nan")}, "learning_rate"),
        (params.SamplingParams, {"top_p": 0}, "top_p"),
        (params.SamplingParams, {"seed": 2**64}, "seed"),
        (params.TrainingSpec, {"dataset": "d", "loss": "ppo"}, "loss"),
        (params.TrainingSpec, {"dataset": "d", "max_seq_len": 1}, "max_seq_len"),
        (runtime_ops.OpBody, {"op": "sample"}, "op"),
    ],
)
def test_each_range_is_refused_naming_its_field(model: type[pydantic.BaseModel], values: dict[str, Any],
                                                field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        model.model_validate(values)
    err = errors.invalid_input(info.value.errors())
    assert isinstance(err, errors.InvalidInput) and err.field == field and err.message.startswith(f"{field}: ")


def test_a_run_sets_steps_or_epochs_not_both() -> None:
    with pytest.raises(pydantic.ValidationError, match="set steps or epochs, not both"):
        params.TrainingSpec(dataset="d", steps=3, epochs=1.0)


@pytest.mark.parametrize(
    ("problems", "prefix", "field"),
    [
        ([{"loc": ("body", "sampling_params", "top_p"), "msg": "bad", "type": "x"}], "", "sampling_params.top_p"),
        ([{"loc": ("data", 2, "weights"), "msg": "bad", "type": "x"}], "", "data.2.weights"),
        ([{"loc": ("top_p",), "msg": "bad", "type": "x"}], "sampling_params.", "sampling_params.top_p"),
        ([{"loc": (), "msg": "bad", "type": "x"}], "lora.", "lora"),
        ([], "", "body"),
        ("not a list", "", "body"),
    ],
)
def test_invalid_input_names_the_first_bad_field(problems: Any, prefix: str, field: str) -> None:
    assert errors.invalid_input(problems, prefix=prefix).field == field


@pytest.mark.parametrize(
    ("namespace", "name", "aid"), [("team-a", "chat", "team-a.chat"), (None, "chat", "chat"), ("", "chat", "chat")]
)
def test_job_adapter_ids_are_unique_across_namespaces(namespace: str | None, name: str, aid: str) -> None:
    assert runtime_ops.job_adapter_id(namespace, name) == aid


def test_checkpoint_and_snapshot_adapter_ids() -> None:
    path = "tinker://s-0123456789ab:train:0/sampler_weights/x"
    assert runtime_ops.checkpoint_adapter_id(path) == runtime_ops.checkpoint_adapter_id(path)
    assert runtime_ops.checkpoint_adapter_id(path).startswith("ckpt-")
    assert runtime_ops.snapshot_adapter_id("s-0123456789ab:sample:3") == "s-0123456789ab-sample-3"
