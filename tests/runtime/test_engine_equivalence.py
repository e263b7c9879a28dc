"""THE equivalence test: adapters trained together in one batch equal each adapter trained alone.

N adapters with different ranks, seeds, target modules and sequence lengths go through one batched
`forward_backward` and their own `optim_step` for 3 steps; each one's gradients, logprobs and
weights must match those of the same adapter alone in its own engine: log-probs within 1e-6 relative
(fp32), gradients within `GRAD_TOL` and weights within `WEIGHT_TOL`.
"""

from __future__ import annotations

import pytest
import torch

from loraplane.runtime import engine as engine_mod
from loraplane.runtime import lora

SPECS = [
    engine_mod.LoraSpec(rank=4, alpha=8.0, seed=1),
    engine_mod.LoraSpec(rank=8, alpha=16.0, seed=2, train_mlp=False),
    engine_mod.LoraSpec(rank=2, alpha=2.0, seed=3, train_attn=False, train_unembed=False),
    engine_mod.LoraSpec(rank=16, alpha=32.0, seed=4, train_attn=False, train_mlp=False),
    engine_mod.LoraSpec(rank=1, alpha=4.0, seed=5, train_unembed=False),
    engine_mod.LoraSpec(rank=6, alpha=3.0, seed=6, train_mlp=False, train_unembed=False),
    engine_mod.LoraSpec(rank=12, alpha=12.0, seed=7),
    engine_mod.LoraSpec(rank=3, alpha=9.0, seed=8, train_attn=False),
]
#: Gradients reduce over the padded batch in a different order than over one adapter's rows; the
#: CPU kernels of PyPI's torch 2.13 build (x86-64) leave up to 1.8e-6 relative on a k_proj lora_B.
GRAD_TOL = 1e-5
#: AdamW divides each gradient by its own running RMS, so an element whose gradient is 1% of the
#: largest carries that rounding 100-fold into its update: 1e-4 of the largest weight bounds it.
WEIGHT_TOL = 1e-4
HP = engine_mod.AdamParams(learning_rate=1e-2, weight_decay=0.01, grad_clip_norm=5.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


UNIFORM_SPECS = [
    engine_mod.LoraSpec(rank=8, alpha=16.0, seed=10 + i, train_mlp=i % 2 == 0, train_unembed=i % 3 == 0)
    for i in range(8)
]


def _work(index: int, uniform: bool = False) -> engine_mod.FwdBwdWork:
    """Adapter `index`'s work: 1-2 rows of lengths that differ between adapters (or 2 rows of 12)."""
    g = torch.Generator().manual_seed(100 + index)
    data = []
    for row in range(2 if uniform else 1 + index % 2):
        n = 12 if uniform else 5 + 3 * index + row
        seq = torch.randint(3, 259, (n + 1,), generator=g)
        weights = torch.rand(n, generator=g) * 2 - 0.5
        data.append(engine_mod.Datum(seq[:-1], {"target_tokens": seq[1:], "weights": weights}))
    return engine_mod.FwdBwdWork(f"adapter-{index}", data, "cross_entropy", {}, False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest elementwise difference relative to the largest magnitude of `b`; 0 when equal."""
    diff = float((a.double() - b.double()).abs().max())
    return 0.0 if diff == 0 else diff / max(float(b.double().abs().max()), 1e-30)


def _grads(engine: engine_mod.Engine, adapter_id: str) -> dict[str, torch.Tensor]:
    record = engine._adapters[adapter_id]
    return {k: p.grad.clone() for k, p in record.params.items() if p.grad is not None}


def _weights(engine: engine_mod.Engine, adapter_id: str) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in engine._adapters[adapter_id].params.items()}


@pytest.mark.parametrize(
    ("n_adapters", "uniform", "pass_tokens"),
    [
        (1, False, None),
        (2, False, None),
        (4, False, None),
        (8, False, None),
        (4, True, None),
        (8, True, None),
        (8, False, 40),
        (8, True, 1),
    ],
)
def test_batched_multi_adapter_training_equals_each_adapter_alone(tiny_model_dir, n_adapters, uniform, pass_tokens):
    """`uniform`: equal ranks and lengths, so the layers take their stacked (bmm) path.

    `pass_tokens`: a small pass budget, so that one call runs several passes.
    """
    specs = UNIFORM_SPECS if uniform else SPECS
    works = [_work(i, uniform) for i in range(n_adapters)]
    together = engine_mod.Engine(str(tiny_model_dir), max_pass_tokens=pass_tokens)
    alone = {}
    for i in range(n_adapters):
        together.create_adapter(works[i].adapter_id, specs[i])
        alone[i] = engine_mod.Engine(str(tiny_model_dir))
        alone[i].create_adapter(works[i].adapter_id, specs[i])

    for _step in range(3):
        batched = together.forward_backward(works)
        for i, work in enumerate(works):
            single = alone[i].forward_backward([work])[0]
            assert not isinstance(batched[i], Exception), batched[i]
            assert not isinstance(single, Exception), single
            for lp_b, lp_s in zip(batched[i].logprobs, single.logprobs, strict=True):
                assert _rel(lp_b, lp_s) <= 1e-6
            assert batched[i].metrics["loss:sum"] == pytest.approx(single.metrics["loss:sum"], rel=1e-6)
            grads_b, grads_s = _grads(together, work.adapter_id), _grads(alone[i], work.adapter_id)
            assert grads_b.keys() == grads_s.keys() and grads_b
            for key in grads_s:
                assert _rel(grads_b[key], grads_s[key]) <= GRAD_TOL, (work.adapter_id, key)
            together.optim_step(work.adapter_id, HP)
            alone[i].optim_step(work.adapter_id, HP)

    for i, work in enumerate(works):
        weights_b, weights_s = _weights(together, work.adapter_id), _weights(alone[i], work.adapter_id)
        for key in weights_s:
            assert _rel(weights_b[key], weights_s[key]) <= WEIGHT_TOL, (work.adapter_id, key)
        lora_b = [v for k, v in weights_b.items() if ".lora_B." in k]
        assert any(float(v.abs().max()) > 0 for v in lora_b), "training moved the weights"


def test_rows_of_one_adapter_from_several_works_are_routed_to_it(tiny_model_dir):
    """Works of adapters interleaved in the batch (a, b, a) still reach their own adapter."""
    engine = engine_mod.Engine(str(tiny_model_dir))
    reference = engine_mod.Engine(str(tiny_model_dir))
    works = [_work(0), _work(1), _work(2)]
    works[2].adapter_id = "adapter-0"
    for eng in (engine, reference):
        eng.create_adapter("adapter-0", SPECS[0])
        eng.create_adapter("adapter-1", SPECS[1])
        # Give B non-zero values so that routing errors show in the logprobs.
        for record in eng._adapters.values():
            with torch.no_grad():
                for key, p in record.params.items():
                    if ".lora_B." in key:
                        p.copy_(torch.linspace(-0.5, 0.5, p.numel()).reshape(p.shape))
    batched = engine.forward_backward(works)
    for i, work in enumerate(works):
        single = reference.forward_backward([work])[0]
        for lp_b, lp_s in zip(batched[i].logprobs, single.logprobs, strict=True):
            assert _rel(lp_b, lp_s) <= 1e-6


@pytest.mark.parametrize(
    ("works", "budget", "expected"),
    [
        ([], 100, []),
        ([("a", [10]), ("b", [10]), ("c", [10])], 100, [[0, 1, 2]]),
        ([("a", [10]), ("b", [10]), ("c", [10])], 20, [[0, 1], [2]]),
        ([("a", [50]), ("b", [10])], 20, [[0], [1]]),
        ([("b", [5]), ("a", [5]), ("b", [5])], 10, [[1], [0, 2]]),
        ([("a", [4, 8]), ("b", [2])], 24, [[0, 1]]),
        ([("a", [4, 8]), ("b", [2])], 23, [[0], [1]]),
    ],
)
def test_plan_passes_splits_between_adapters_within_the_budget(works, budget, expected):
    assert lora.plan_passes(works, budget) == expected
