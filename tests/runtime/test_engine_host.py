"""Loading the base model: device and dtype choices, EOS ids, local files only, bf16 training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from loraplane.core import errors
from loraplane.runtime import engine as engine_mod
from loraplane.runtime import model_host


@pytest.mark.parametrize(
    ("device", "cuda", "expected"),
    [("auto", False, "cpu"), ("auto", True, "cuda"), ("cpu", True, "cpu"), ("cuda:1", True, "cuda:1")],
)
def test_resolve_device(device, cuda, expected):
    assert model_host.resolve_device(device, cuda) == torch.device(expected)


@pytest.mark.parametrize("device", ["cuda", "tpu-ish", "cuda:0"])
def test_unavailable_or_unknown_device_is_rejected(device):
    with pytest.raises(errors.InvalidInput) as info:
        model_host.resolve_device(device, cuda_available=False)
    assert info.value.field == "device"


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        ("auto", "cpu", torch.float32),
        ("auto", "cuda", torch.bfloat16),
        ("float16", "cpu", torch.float16),
        ("bf16", "cpu", torch.bfloat16),
        ("float32", "cuda", torch.float32),
    ],
)
def test_resolve_dtype(dtype, device, expected):
    assert model_host.resolve_dtype(dtype, torch.device(device)) == expected


def test_unknown_dtype_is_rejected():
    with pytest.raises(errors.InvalidInput) as info:
        model_host.resolve_dtype("int4", torch.device("cpu"))
    assert info.value.field == "dtype"


@pytest.mark.parametrize(
    ("tokenizer_eos", "generation_eos", "expected"),
    [(2, None, [2]), (2, 2, [2]), (2, [7, 8], [7, 8, 2]), (None, 5, [5]), (None, None, [])],
)
def test_eos_ids_merge_generation_config_and_tokenizer(tokenizer_eos, generation_eos, expected):
    tokenizer = SimpleNamespace(eos_token_id=tokenizer_eos)
    generation = SimpleNamespace(eos_token_id=generation_eos)
    assert model_host.eos_ids(tokenizer, generation) == expected


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [([5, 5, 5], None), ([3, 5, 5], [(3, slice(0, 1)), (5, slice(1, 3))]), ([5, 3, 5], [(3, slice(1, 2)), (5, [0, 2])])],
)
def test_length_groups(lengths, expected):
    groups = model_host.length_groups(lengths)
    if expected is None:
        assert groups is None
        return
    normalised = [(n, rows if isinstance(rows, slice) else rows.tolist()) for n, rows in groups]
    assert normalised == expected


def test_a_missing_model_is_not_found_and_never_downloaded(tmp_path):
    with pytest.raises(errors.NotFound) as info:
        engine_mod.Engine(str(tmp_path / "no-such-model"))
    assert info.value.field == "model_path"


def test_engine_reports_its_model(tiny_model_dir):
    engine = engine_mod.Engine(str(tiny_model_dir), base_model="tiny/llama")
    assert (engine.base_model, engine.model_path) == ("tiny/llama", str(tiny_model_dir))
    assert engine.device == torch.device("cpu") and engine.dtype == torch.float32
    assert engine.vocab_size == 259 and engine.eos_token_ids == [engine.tokenizer.eos_token_id]
    assert all(not p.requires_grad for p in engine.model.parameters())


def test_bfloat16_base_trains_fp32_adapters(tiny_model_dir):
    engine = engine_mod.Engine(str(tiny_model_dir), dtype="bfloat16")
    assert engine.dtype == torch.bfloat16
    engine.create_adapter("a", engine_mod.LoraSpec(rank=4, seed=0))
    seq = torch.arange(5, 30)
    work = engine_mod.FwdBwdWork("a", [engine_mod.Datum(seq[:-1], {"target_tokens": seq[1:]})])
    losses = []
    for _ in range(4):
        result = engine.forward_backward([work])[0]
        losses.append(result.metrics["loss:sum"])
        assert result.logprobs[0].dtype == torch.float32
        engine.optim_step("a", engine_mod.AdamParams(learning_rate=1e-2))
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in engine._adapters["a"].params.values())
    sample = engine.sample("a", [1, 5, 6], 2, engine_mod.SamplingParams(max_tokens=3, seed=0))
    assert all(len(s.tokens) == len(s.logprobs) for s in sample.sequences)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"_attn_implementation": "sdpa"}, True),
        ({"_attn_implementation": "eager"}, False),
        ({"_attn_implementation": "sdpa", "layer_types": ["full_attention", "full_attention"]}, True),
        ({"_attn_implementation": "sdpa", "layer_types": ["sliding_attention", "full_attention"]}, False),
        ({"_attn_implementation": "sdpa", "sliding_window": 4096, "use_sliding_window": False}, True),
        ({"_attn_implementation": "sdpa", "sliding_window": 4096}, False),
        ({"_attn_implementation": "sdpa", "sliding_window": None}, True),
    ],
)
def test_packed_attention_only_where_it_matches_the_models_own(fields, expected):
    assert model_host.packs_safely(SimpleNamespace(**fields)) is expected


def test_the_tiny_llama_runs_packed_attention(tiny_model_dir):
    engine = engine_mod.Engine(str(tiny_model_dir))
    assert engine._packed_attention
    assert engine.model.config._attn_implementation == model_host.PACKED_ATTENTION


def test_cpu_weights_are_re_stored_transposed_with_the_same_values_and_shared_weights_left_alone():
    embed = torch.nn.Embedding(11, 6)
    head = torch.nn.Linear(6, 11, bias=False)
    head.weight = embed.weight  # tied, as many small models are
    proj = torch.nn.Linear(6, 4)
    twin_a, twin_b = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)
    twin_b.weight = twin_a.weight  # two linears sharing one weight
    model = torch.nn.ModuleDict({"embed": embed, "proj": proj, "head": head, "a": twin_a, "b": twin_b})
    before = proj.weight.detach().clone()
    x = torch.randn(3, 6)
    expected = proj(x)

    assert model_host.store_weights_for_gemm(model) == 1

    assert proj.weight.shape == (4, 6) and proj.weight.stride() == (1, 4)
    assert torch.equal(proj.weight, before) and torch.allclose(proj(x), expected, atol=1e-6)
    assert head.weight is embed.weight and embed.weight.is_contiguous()
    assert twin_a.weight is twin_b.weight and twin_a.weight.is_contiguous()
    assert model_host.store_weights_for_gemm(model) == 0  # a second call changes nothing


def test_an_fp32_cpu_engine_keeps_its_linear_weights_row_major_by_input(tiny_model_dir):
    engine = engine_mod.Engine(str(tiny_model_dir))
    weight = engine.model.get_submodule("model.layers.0.mlp.up_proj").base_layer.weight
    assert weight.t().is_contiguous() and not weight.requires_grad
    bf16 = engine_mod.Engine(str(tiny_model_dir), dtype="bfloat16")
    assert bf16.model.get_submodule("model.layers.0.mlp.up_proj").base_layer.weight.is_contiguous()
