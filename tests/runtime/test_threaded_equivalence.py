"""Adapters trained together through the executor equal the same adapters trained alone.

Each adapter's client thread submits forward_backward + optim_step with in-order seq ids (without
waiting, as the SDK does); the model thread batches the adapters' work into shared engine passes.
Per step, the loss, logprobs and gradient norm, and at the end the saved weights and optimizer
moments, must match a reference where each adapter runs alone on its own engine calls (fp32,
1e-6 relative). This is the property the thread-pool design broke with two or more adapters.
"""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

from loraplane.core.settings import RuntimeSettings
from loraplane.runtime.engine import AdamParams, Datum, Engine, FwdBwdWork, LoraSpec
from loraplane.runtime.executor import Executor, OptimStep

STEPS = 3
PARAMS = AdamParams(learning_rate=0.02, weight_decay=0.01, grad_clip_norm=5.0)


def adapter_data(index: int, step: int) -> list[Datum]:
    """Two rows of different lengths per adapter and step, so batches need padding."""
    g = torch.Generator().manual_seed(1000 * index + step)
    rows = []
    for length in (5 + index % 3, 9):
        tokens = torch.randint(3, 259, (length,), generator=g)
        targets = torch.randint(3, 259, (length,), generator=g)
        weights = (torch.rand(length, generator=g) > 0.3).float()
        rows.append(Datum(tokens=tokens, loss_inputs={"target_tokens": targets, "weights": weights}))
    return rows


def spec(index: int) -> LoraSpec:
    return LoraSpec(rank=4, alpha=8.0, seed=index + 1)


def saved_tensors(engine: Engine, adapter_id: str, directory) -> dict[str, torch.Tensor]:
    dest = directory / adapter_id
    engine.save_state(adapter_id, str(dest), optimizer=True)
    tensors = load_file(str(dest / "adapter_model.safetensors"))
    optimizer = torch.load(dest / "optimizer.pt", weights_only=False)
    tensors.update(_flatten("optimizer", optimizer))
    return tensors


def _flatten(prefix, value):
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(f"{prefix}.{key}", item).items()}
    if isinstance(value, list | tuple):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(f"{prefix}[{i}]", item).items()}
    return {}


def train_alone(model_dir, n: int, directory):
    """Reference: each adapter's steps run by direct engine calls, one adapter per pass."""
    engine = Engine(str(model_dir), device="cpu", dtype="float32")
    trace, tensors = {}, {}
    for i in range(n):
        a = f"ad{i}"
        engine.create_adapter(a, spec(i))
        trace[a] = []
        for step in range(STEPS):
            [result] = engine.forward_backward([FwdBwdWork(a, adapter_data(i, step))])
            metrics = engine.optim_step(a, PARAMS)
            trace[a].append((result.metrics["loss:sum"], torch.cat(result.logprobs), metrics["grad_norm:mean"]))
        tensors[a] = saved_tensors(engine, a, directory)
    return trace, tensors


class CountingEngine(Engine):
    """The real engine, counting how many adapters share each forward_backward pass."""

    adapters_per_pass: list[int]

    def forward_backward(self, works):
        self.adapters_per_pass.append(len({w.adapter_id for w in works}))
        return super().forward_backward(works)


def train_together(model_dir, n: int, directory, paused: bool):
    engine = CountingEngine(str(model_dir), device="cpu", dtype="float32")
    engine.adapters_per_pass = []
    executor = Executor(engine, RuntimeSettings(), start=False)
    try:
        for i in range(n):
            executor.create_adapter(f"ad{i}", spec(i))
        executor.run_once()  # this thread is the model thread until start()
        if not paused:
            executor.start()  # live: the model thread runs while the clients submit
        futures: dict[str, list] = {}
        barrier = threading.Barrier(n)

        def client(i: int) -> None:
            a = f"ad{i}"
            barrier.wait(10)
            mine = []
            for step in range(STEPS):
                mine.append(executor.submit(a, 2 * step + 1, FwdBwdWork(a, adapter_data(i, step)))[1])
                mine.append(executor.submit(a, 2 * step + 2, OptimStep(a, PARAMS))[1])
            futures[a] = mine

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        executor.start()
        trace = {}
        for a, mine in futures.items():
            trace[a] = []
            for step in range(STEPS):
                result, metrics = mine[2 * step].result(60), mine[2 * step + 1].result(60)
                trace[a].append((result.metrics["loss:sum"], torch.cat(result.logprobs), metrics["grad_norm:mean"]))
        tensors = executor.call(lambda eng: {a: saved_tensors(eng, a, directory) for a in futures}).result(60)
        return trace, tensors, engine.adapters_per_pass
    finally:
        executor.close()


@pytest.mark.parametrize("paused", [True, False], ids=["all-queued-then-run", "live"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_adapters_trained_together_equal_each_trained_alone(tiny_model_dir, tmp_path, n, paused):
    torch.set_num_threads(1)
    ref_trace, ref_tensors = train_alone(tiny_model_dir, n, tmp_path / "alone")
    trace, tensors, adapters_per_pass = train_together(tiny_model_dir, n, tmp_path / "together", paused)
    if paused:
        assert max(adapters_per_pass) == n, adapters_per_pass  # the adapters really shared passes
    for a in ref_trace:
        for (ref_loss, ref_lp, ref_norm), (loss, lp, norm) in zip(ref_trace[a], trace[a], strict=True):
            torch.testing.assert_close(torch.tensor(loss), torch.tensor(ref_loss), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(lp, ref_lp, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(torch.tensor(norm), torch.tensor(ref_norm), rtol=1e-6, atol=1e-6)
        assert ref_tensors[a].keys() == tensors[a].keys() and len(tensors[a]) > 2
        for key in ref_tensors[a]:
            torch.testing.assert_close(tensors[a][key], ref_tensors[a][key], rtol=1e-6, atol=1e-7, msg=key)
