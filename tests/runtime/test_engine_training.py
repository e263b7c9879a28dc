"""Training through the engine: logprobs, learning, gradient accumulation, adapters' life, bad input."""

from __future__ import annotations

import pytest
import torch

from loraplane.core import errors
from loraplane.runtime import engine as engine_mod


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    torch.set_num_threads(1)
    return engine_mod.Engine(str(tiny_model_dir))


def _datum(n: int, seed: int, **extra: torch.Tensor) -> engine_mod.Datum:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(3, 259, (n + 1,), generator=g)
    return engine_mod.Datum(seq[:-1].clone(), {"target_tokens": seq[1:].clone(), **extra})


def _work(adapter_id: str, data: list[engine_mod.Datum], **kwargs) -> engine_mod.FwdBwdWork:
    return engine_mod.FwdBwdWork(adapter_id, data, **kwargs)


def _grads(engine, adapter_id):
    return {k: p.grad.clone() for k, p in engine._adapters[adapter_id].params.items() if p.grad is not None}


def test_logprobs_of_a_fresh_adapter_equal_the_base_models(engine, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    engine.create_adapter("fresh", engine_mod.LoraSpec(rank=4, seed=0))
    datum = _datum(9, 1)
    result = engine.forward_backward([_work("fresh", [datum], forward_only=True)])[0]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        logits = base(input_ids=datum.tokens[None]).logits[0]
    expected = logits.log_softmax(-1).gather(-1, datum.loss_inputs["target_tokens"][:, None]).squeeze(-1)
    torch.testing.assert_close(result.logprobs[0], expected, rtol=0, atol=1e-5)
    assert result.logprobs[0].dtype == torch.float32
    assert result.metrics["loss:sum"] == pytest.approx(-float(expected.sum()), rel=1e-5)
    engine.delete_adapter("fresh")


def test_loss_falls_over_ten_steps_on_a_learnable_batch(engine):
    engine.create_adapter("learner", engine_mod.LoraSpec(rank=8, seed=1))
    data = [_datum(16, 2), _datum(12, 3)]
    hp = engine_mod.AdamParams(learning_rate=5e-3)
    seen = []
    for _ in range(10):
        result = engine.forward_backward([_work("learner", data)])[0]
        seen.append(result.metrics["loss:sum"])
        metrics = engine.optim_step("learner", hp)
        assert metrics["grad_norm:mean"] > 0
    assert seen[-1] < 0.5 * seen[0]
    assert all(b < a for a, b in zip(seen, seen[1:], strict=False))
    assert engine.adapter_step("learner") == 10
    engine.delete_adapter("learner")


def test_gradients_accumulate_over_calls_until_optim_step(engine):
    engine.create_adapter("acc", engine_mod.LoraSpec(rank=4, seed=2))
    engine.create_adapter("one", engine_mod.LoraSpec(rank=4, seed=2))
    d1, d2 = _datum(8, 4), _datum(6, 5, weights=torch.linspace(-1, 2, 6))
    # Give both the same non-zero B so that every tensor gets a gradient.
    for aid in ("acc", "one"):
        with torch.no_grad():
            for key, p in engine._adapters[aid].params.items():
                if ".lora_B." in key:
                    p.fill_(0.01)
    engine.forward_backward([_work("acc", [d1])])
    engine.forward_backward([_work("acc", [d2])])
    engine.forward_backward([_work("one", [d1, d2])])
    acc, one = _grads(engine, "acc"), _grads(engine, "one")
    assert acc.keys() == one.keys() and acc
    for key in acc:
        # Two passes and one pass sum the same terms in different orders: equal to fp32 rounding,
        # measured against the tensor's own scale (a missed call would be off by a whole term).
        scale = one[key].abs().max().item()
        torch.testing.assert_close(acc[key], one[key], rtol=1e-5, atol=1e-5 * scale)
    engine.optim_step("acc", engine_mod.AdamParams())
    assert _grads(engine, "acc") == {}
    engine.delete_adapter("acc")
    engine.delete_adapter("one")


def test_forward_only_leaves_no_gradient(engine):
    engine.create_adapter("fwd", engine_mod.LoraSpec(rank=2, seed=3))
    engine.forward_backward([_work("fwd", [_datum(5, 6)], forward_only=True)])
    assert _grads(engine, "fwd") == {}
    engine.delete_adapter("fwd")


@pytest.mark.parametrize(
    ("mutate", "field", "exc"),
    [
        (lambda w: setattr(w, "adapter_id", "missing"), "adapter_id", errors.NotFound),
        (lambda w: setattr(w, "loss_fn", "mse"), "loss_fn", errors.InvalidInput),
        (lambda w: setattr(w, "data", []), "data", errors.InvalidInput),
        (lambda w: w.data[0].tokens.__setitem__(0, 259), "data[0].model_input", errors.InvalidInput),
        (lambda w: w.data[0].tokens.__setitem__(0, -1), "data[0].model_input", errors.InvalidInput),
        (lambda w: setattr(w.data[0], "tokens", torch.zeros(0, dtype=torch.long)), "data[0].model_input",
         errors.InvalidInput),
        (lambda w: setattr(w.data[0], "tokens", w.data[0].tokens.float()), "data[0].model_input", errors.InvalidInput),
        (lambda w: w.data[1].loss_inputs.pop("target_tokens"), "data[1].loss_fn_inputs.target_tokens",
         errors.InvalidInput),
        (lambda w: w.data[1].loss_inputs.__setitem__("target_tokens", torch.tensor([1, 2])),
         "data[1].loss_fn_inputs.target_tokens", errors.InvalidInput),
        (lambda w: w.data[0].loss_inputs["target_tokens"].__setitem__(2, 10_000),
         "data[0].loss_fn_inputs.target_tokens", errors.InvalidInput),
        (lambda w: w.data[0].loss_inputs.__setitem__("weights", torch.ones(3)), "data[0].loss_fn_inputs.weights",
         errors.InvalidInput),
        (lambda w: setattr(w, "loss_fn", "ppo"), "data[0].loss_fn_inputs.logprobs", errors.InvalidInput),
        (lambda w: setattr(w, "loss_fn", "dro"), "loss_fn_config.beta", errors.InvalidInput),
    ],
)
def test_bad_work_fails_alone_naming_the_field_and_the_engine_keeps_working(engine, mutate, field, exc):
    engine.create_adapter("good", engine_mod.LoraSpec(rank=2, seed=4))
    engine.create_adapter("bad", engine_mod.LoraSpec(rank=2, seed=5))
    good = _work("good", [_datum(7, 7)])
    bad = _work("bad", [_datum(6, 8), _datum(4, 9)])
    mutate(bad)
    with pytest.raises(exc) as info:
        engine.validate(bad)
    assert info.value.field == field
    results = engine.forward_backward([good, bad, _work("good", [_datum(3, 10)])])
    assert isinstance(results[1], exc) and results[1].field == field
    assert isinstance(results[0], engine_mod.FwdBwdResult) and isinstance(results[2], engine_mod.FwdBwdResult)
    assert engine.optim_step("good", engine_mod.AdamParams())["grad_norm:mean"] >= 0
    again = engine.forward_backward([_work("bad", [_datum(5, 11)])])[0]
    assert isinstance(again, engine_mod.FwdBwdResult)
    engine.delete_adapter("good")
    engine.delete_adapter("bad")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"alpha": 0.0}, "alpha"),
        ({"seed": "x"}, "seed"),
        ({"train_attn": False, "train_mlp": False, "train_unembed": False}, "train_unembed"),
    ],
)
def test_bad_lora_spec_is_rejected_naming_the_field(kwargs, field):
    with pytest.raises(errors.InvalidInput) as info:
        engine_mod.LoraSpec(**kwargs)
    assert info.value.field == field


def test_adapter_life_create_idempotent_conflict_delete(engine):
    spec = engine_mod.LoraSpec(rank=4, seed=9, train_mlp=False, train_unembed=False)
    engine.create_adapter("life", spec)
    engine.create_adapter("life", spec)
    assert engine.has_adapter("life") and "life" in engine.adapter_ids()
    assert engine.adapter_spec("life") == spec and engine.adapter_step("life") == 0
    assert not engine.is_sampler("life")
    with pytest.raises(errors.Conflict):
        engine.create_adapter("life", engine_mod.LoraSpec(rank=8, seed=9))
    keys = set(engine._adapters["life"].params)
    assert not any("lm_head" in k or "mlp" in k for k in keys)
    assert any(k.endswith("self_attn.q_proj.lora_A.weight") for k in keys)
    engine.delete_adapter("life")
    assert not engine.has_adapter("life")
    assert all("life" not in layer.lora_A for layer in engine._layers.values())
    with pytest.raises(errors.NotFound):
        engine.delete_adapter("life")
    with pytest.raises(errors.NotFound):
        engine.optim_step("life", engine_mod.AdamParams())


def test_rank_above_the_runtimes_limit_is_rejected(tiny_model_dir):
    small = engine_mod.Engine(str(tiny_model_dir), max_lora_rank=8)
    with pytest.raises(errors.InvalidInput) as info:
        small.create_adapter("big", engine_mod.LoraSpec(rank=16))
    assert info.value.field == "rank"


def test_same_seed_gives_the_same_initial_weights(engine):
    engine.create_adapter("s1", engine_mod.LoraSpec(rank=4, seed=42))
    engine.create_adapter("s2", engine_mod.LoraSpec(rank=4, seed=42))
    engine.create_adapter("s3", engine_mod.LoraSpec(rank=4, seed=43))
    p1, p2, p3 = (engine._adapters[a].params for a in ("s1", "s2", "s3"))
    key = next(k for k in p1 if ".lora_A." in k)
    assert torch.equal(p1[key], p2[key]) and not torch.equal(p1[key], p3[key])
    assert all(float(v.detach().abs().max()) == 0 for k, v in p1.items() if ".lora_B." in k)
    for aid in ("s1", "s2", "s3"):
        engine.delete_adapter(aid)


def test_sampler_snapshots_cannot_be_trained(engine):
    engine.create_adapter("live", engine_mod.LoraSpec(rank=2, seed=6))
    engine.snapshot("live", "snap")
    assert engine.is_sampler("snap")
    result = engine.forward_backward([_work("snap", [_datum(4, 12)])])[0]
    assert isinstance(result, errors.InvalidInput) and result.field == "adapter_id"
    with pytest.raises(errors.InvalidInput):
        engine.optim_step("snap", engine_mod.AdamParams())
    ok = engine.forward_backward([_work("snap", [_datum(4, 12)], forward_only=True)])[0]
    assert isinstance(ok, engine_mod.FwdBwdResult)
    engine.delete_adapter("snap")
    engine.delete_adapter("live")


def test_a_pass_that_faults_fails_only_its_own_works(tiny_model_dir, monkeypatch):
    engine = engine_mod.Engine(str(tiny_model_dir), max_pass_tokens=8)  # one adapter per pass
    engine.create_adapter("boom", engine_mod.LoraSpec(rank=2, seed=1))
    engine.create_adapter("calm", engine_mod.LoraSpec(rank=2, seed=2))
    layer = next(iter(engine._layers.values()))
    real_forward = layer.forward

    def faulty_forward(x):
        if any(seg.adapter_id == "boom" for seg in engine._router.segments):
            raise torch.OutOfMemoryError("simulated")
        return real_forward(x)

    monkeypatch.setattr(layer, "forward", faulty_forward)
    results = engine.forward_backward([_work("boom", [_datum(6, 1)]), _work("calm", [_datum(6, 2)])])
    assert isinstance(results[0], errors.CapacityError)
    assert isinstance(results[1], engine_mod.FwdBwdResult)
    assert _grads(engine, "boom") == {} and _grads(engine, "calm")
    monkeypatch.undo()
    assert isinstance(engine.forward_backward([_work("boom", [_datum(6, 1)])])[0], engine_mod.FwdBwdResult)
