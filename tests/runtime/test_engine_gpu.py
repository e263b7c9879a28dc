"""The engine on a CUDA device: batched equals alone, bf16 training and sampling. Skipped without one."""

from __future__ import annotations

import pytest
import torch

from loraplane.runtime import engine as engine_mod

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _work(i: int, n: int) -> engine_mod.FwdBwdWork:
    g = torch.Generator().manual_seed(i)
    seq = torch.randint(3, 259, (n + 1,), generator=g)
    return engine_mod.FwdBwdWork(f"a{i}", [engine_mod.Datum(seq[:-1].cuda(), {"target_tokens": seq[1:].cuda()})])


def test_batched_adapters_match_each_alone_on_cuda_fp32(tiny_model_dir):
    works = [_work(i, 8 + 5 * i) for i in range(4)]
    together = engine_mod.Engine(str(tiny_model_dir), device="cuda", dtype="float32")
    batched_lps = {}
    for i, work in enumerate(works):
        together.create_adapter(work.adapter_id, engine_mod.LoraSpec(rank=4 + i, seed=i))
    for i, result in enumerate(together.forward_backward(works)):
        batched_lps[i] = result.logprobs[0]
    for i, work in enumerate(works):
        alone = engine_mod.Engine(str(tiny_model_dir), device="cuda", dtype="float32")
        alone.create_adapter(work.adapter_id, engine_mod.LoraSpec(rank=4 + i, seed=i))
        single = alone.forward_backward([work])[0]
        # cuBLAS may pick other kernels for other batch shapes: equal to fp32 rounding, not bitwise.
        torch.testing.assert_close(batched_lps[i], single.logprobs[0], rtol=1e-5, atol=1e-5)
        for key, p in alone._adapters[work.adapter_id].params.items():
            mine = together._adapters[work.adapter_id].params[key].grad
            if p.grad is None:
                assert mine is None
            else:
                torch.testing.assert_close(mine, p.grad, rtol=1e-4, atol=1e-6)


def test_bf16_training_and_sampling_on_cuda(tiny_model_dir):
    engine = engine_mod.Engine(str(tiny_model_dir), device="cuda")
    assert engine.dtype == torch.bfloat16
    engine.create_adapter("a0", engine_mod.LoraSpec(rank=8, seed=0))
    work = _work(0, 32)
    losses = []
    for _ in range(5):
        losses.append(engine.forward_backward([work])[0].metrics["loss:sum"])
        engine.optim_step("a0", engine_mod.AdamParams(learning_rate=1e-2))
    assert losses[-1] < losses[0]
    params = engine_mod.SamplingParams(max_tokens=8, seed=3, stop=[])
    first = engine.sample("a0", [1, 5, 6], 4, params)
    again = engine.sample("a0", [1, 5, 6], 4, params)
    assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
    engine.offload("a0")
    assert engine.resident_bytes("a0") == 0
    engine.ensure_resident("a0")
    assert engine._adapters["a0"].params[next(iter(engine._adapters["a0"].params))].is_cuda
