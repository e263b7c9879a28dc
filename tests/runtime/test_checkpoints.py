"""Saved states: PEFT loads them with the same logits; resuming continues training exactly; offloads."""

from __future__ import annotations

import json
import warnings

import fsspec
import pytest
import torch

from loraplane.core import errors
from loraplane.runtime import checkpoints
from loraplane.runtime import engine as engine_mod

HP = engine_mod.AdamParams(learning_rate=1e-2, weight_decay=0.01, grad_clip_norm=1.0)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    torch.set_num_threads(1)
    return engine_mod.Engine(str(tiny_model_dir), base_model="tiny/llama")


def _data(seed: int) -> list[engine_mod.Datum]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (9, 6):
        seq = torch.randint(3, 259, (n + 1,), generator=g)
        out.append(engine_mod.Datum(seq[:-1].clone(), {"target_tokens": seq[1:].clone()}))
    return out


def _train(engine, adapter_id: str, steps: int, first_seed: int = 0) -> None:
    for i in range(steps):
        work = engine_mod.FwdBwdWork(adapter_id, _data(first_seed + i), "cross_entropy", {}, False)
        result = engine.forward_backward([work])[0]
        assert isinstance(result, engine_mod.FwdBwdResult), result
        engine.optim_step(adapter_id, HP)


def _weights(engine, adapter_id):
    return {k: p.detach().clone() for k, p in engine._adapters[adapter_id].params.items()}


@pytest.mark.parametrize(
    "spec",
    [
        engine_mod.LoraSpec(rank=4, alpha=8.0, seed=1),
        engine_mod.LoraSpec(rank=2, alpha=32.0, seed=2, train_attn=False, train_unembed=False),
        engine_mod.LoraSpec(rank=3, alpha=5.0, seed=3, train_mlp=False),
    ],
)
def test_saved_adapter_loads_in_peft_with_the_engines_logits(engine, tiny_model_dir, tmp_path, spec):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_id = f"peft-{spec.seed}"
    engine.create_adapter(adapter_id, spec)
    _train(engine, adapter_id, 3)
    size = engine.save_sampler(adapter_id, str(tmp_path / "adapter"))
    assert size > 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == spec.rank and config["lora_alpha"] == spec.alpha
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == "tiny/llama"

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    key_warnings = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert key_warnings == []  # PEFT warns about missing or unexpected adapter keys
    peft_model.eval()
    tokens = _data(99)[0].tokens
    work = engine_mod.FwdBwdWork(
        adapter_id, [engine_mod.Datum(tokens, {"target_tokens": tokens})], "cross_entropy", {}, True
    )
    ours = engine.forward_backward([work])[0].logprobs[0]
    with torch.no_grad():
        logits = peft_model(input_ids=tokens[None]).logits[0]
    theirs = logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    with engine._router.route([engine_mod.lora.Segment(adapter_id, 0, 1)]), torch.no_grad():
        our_logits = engine.model(input_ids=tokens[None]).logits[0]
    torch.testing.assert_close(our_logits, logits, rtol=0, atol=1e-5)
    engine.delete_adapter(adapter_id)


def test_saved_keys_are_peft_names_and_lm_head_has_only_lora_tensors(engine, tmp_path):
    from safetensors.torch import load_file

    engine.create_adapter("keys", engine_mod.LoraSpec(rank=2, seed=4))
    engine.save_state("keys", str(tmp_path / "state"))
    keys = set(load_file(str(tmp_path / "state" / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert {"base_model.model.lm_head.lora_A.weight", "base_model.model.lm_head.lora_B.weight"} <= keys
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in keys)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "trainer_state.json",
    ]
    engine.delete_adapter("keys")


@pytest.mark.parametrize("url_kind", ["path", "file", "memory"])
def test_resume_from_a_saved_state_continues_exactly_as_uninterrupted_training(tiny_model_dir, tmp_path, url_kind):
    spec = engine_mod.LoraSpec(rank=4, alpha=16.0, seed=7)
    dest = {
        "path": str(tmp_path / "ckpt"),
        "file": f"file://{tmp_path}/ckpt",
        "memory": f"memory://loraplane-tests/{tmp_path.name}/ckpt",
    }[url_kind]
    straight = engine_mod.Engine(str(tiny_model_dir))
    straight.create_adapter("run", spec)
    _train(straight, "run", 5)

    first = engine_mod.Engine(str(tiny_model_dir))
    first.create_adapter("run", spec)
    _train(first, "run", 3)
    written = first.save_state("run", dest)
    fs, root = fsspec.core.url_to_fs(dest)
    assert written == sum(fs.size(path) for path in fs.ls(root, detail=False))
    state = json.loads(fs.cat_file(f"{root}/trainer_state.json"))
    assert state["step"] == 3 and state["lora"]["rank"] == 4 and state["kind"] == "train"

    resumed = engine_mod.Engine(str(tiny_model_dir))
    assert resumed.load_state("run2", dest) == spec
    assert resumed.adapter_step("run2") == 3
    _train(resumed, "run2", 2, first_seed=3)
    assert resumed.adapter_step("run2") == 5
    ours, expected = _weights(resumed, "run2"), _weights(straight, "run")
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=0, atol=1e-7)


def test_loading_without_the_optimizer_restarts_the_moments(engine, tmp_path):
    engine.create_adapter("noopt", engine_mod.LoraSpec(rank=2, seed=8))
    _train(engine, "noopt", 2)
    engine.save_state("noopt", str(tmp_path / "s"), optimizer=False)
    assert not (tmp_path / "s" / "optimizer.pt").exists()
    engine.load_state("noopt-copy", str(tmp_path / "s"))
    assert engine._adapters["noopt-copy"].optim_state.step == 0
    assert engine.adapter_step("noopt-copy") == 2
    for key, value in _weights(engine, "noopt").items():
        assert torch.equal(engine._adapters["noopt-copy"].params[key].detach(), value)
    engine.delete_adapter("noopt")
    engine.delete_adapter("noopt-copy")


def test_load_errors_name_the_source_and_conflicts(engine, tmp_path):
    with pytest.raises(errors.NotFound) as info:
        engine.load_state("ghost", str(tmp_path / "nothing-here"))
    assert info.value.field == "source"
    engine.create_adapter("c1", engine_mod.LoraSpec(rank=2, seed=9))
    engine.save_state("c1", str(tmp_path / "c1"))
    engine.create_adapter("c2", engine_mod.LoraSpec(rank=8, seed=9))
    with pytest.raises(errors.Conflict):
        engine.load_state("c2", str(tmp_path / "c1"))
    assert not engine.has_adapter("ghost")
    engine.delete_adapter("c1")
    engine.delete_adapter("c2")


def test_a_plain_peft_adapter_directory_loads(engine, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    spec = engine.load_state("from-peft", str(tmp_path / "peft"))
    assert (spec.rank, spec.alpha, spec.train_attn, spec.train_mlp, spec.train_unembed) == (4, 8.0, True, False, False)
    tokens = torch.arange(10, 20)
    ours = engine.forward_backward(
        [engine_mod.FwdBwdWork("from-peft", [engine_mod.Datum(tokens, {"target_tokens": tokens})], forward_only=True)]
    )[0].logprobs[0]
    with torch.no_grad():
        theirs = peft_model(input_ids=tokens[None]).logits[0].log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    engine.delete_adapter("from-peft")


@pytest.mark.parametrize("where", ["host", "dir"])
def test_offloaded_adapter_comes_back_and_trains_on_exactly(tiny_model_dir, tmp_path, where):
    spec = engine_mod.LoraSpec(rank=4, seed=11)
    reference = engine_mod.Engine(str(tiny_model_dir))
    reference.create_adapter("a", spec)
    _train(reference, "a", 4)

    engine = engine_mod.Engine(str(tiny_model_dir))
    engine.create_adapter("a", spec)
    _train(engine, "a", 2)
    # Pending gradients travel with the adapter too.
    engine.forward_backward([engine_mod.FwdBwdWork("a", _data(2), "cross_entropy", {}, False)])
    resident = engine.resident_bytes("a")
    assert resident > 0
    engine.offload("a", "host" if where == "host" else str(tmp_path / "offload"))
    assert not engine.is_resident("a") and engine.resident_bytes("a") == 0
    if where == "dir":
        assert len(list((tmp_path / "offload").iterdir())) == 1
    engine.optim_step("a", HP)  # brings it back by itself
    assert engine.is_resident("a") and engine.resident_bytes("a") == resident
    if where == "dir":
        assert list((tmp_path / "offload").iterdir()) == []
    _train(engine, "a", 1, first_seed=3)
    for key, value in _weights(reference, "a").items():
        torch.testing.assert_close(engine._adapters["a"].params[key].detach(), value, rtol=0, atol=1e-7)


def test_peft_config_names_the_trained_modules():
    cfg = checkpoints.LoraConfig(rank=8, alpha=16.0, seed=None, train_attn=False, train_mlp=True, train_unembed=True)
    body = checkpoints.peft_config(cfg, "base")
    assert body["target_modules"] == ["gate_proj", "up_proj", "down_proj", "lm_head"]
    assert (body["lora_dropout"], body["bias"], body["peft_type"]) == (0.0, "none", "LORA")
    assert checkpoints.config_from_peft(body) == cfg


def test_loading_into_an_existing_adapter_of_another_seed_replaces_its_weights(engine, tmp_path):
    engine.create_adapter("seeded", engine_mod.LoraSpec(rank=2, seed=1))
    _train(engine, "seeded", 1)
    engine.save_state("seeded", str(tmp_path / "seeded"))
    engine.create_adapter("target", engine_mod.LoraSpec(rank=2, seed=None))
    assert engine.load_state("target", str(tmp_path / "seeded")) == engine_mod.LoraSpec(rank=2, seed=None)
    for key, value in _weights(engine, "seeded").items():
        assert torch.equal(engine._adapters["target"].params[key].detach(), value)
    engine.delete_adapter("seeded")
    engine.delete_adapter("target")
