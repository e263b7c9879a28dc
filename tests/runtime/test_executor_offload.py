"""The resident-adapter budget with the real engine: offloaded adapters come back unchanged."""

from __future__ import annotations

import pytest
import torch

from loraplane.core.settings import RuntimeSettings
from loraplane.runtime.engine import AdamParams, Datum, Engine, FwdBwdWork, LoraSpec
from loraplane.runtime.executor import Executor, OptimStep


def work(adapter_id: str) -> FwdBwdWork:
    tokens = torch.tensor([5, 9, 13, 17, 21])
    return FwdBwdWork(adapter_id, [Datum(tokens, {"target_tokens": tokens + 1, "weights": torch.ones(5)})])


@pytest.mark.parametrize("offload_to", ["host", "disk"])
def test_budget_offloads_lru_adapters_and_they_return_with_the_same_weights(tiny_model_dir, tmp_path, offload_to):
    torch.set_num_threads(1)
    target = "host" if offload_to == "host" else str(tmp_path / "offload")
    engine = Engine(str(tiny_model_dir), device="cpu", dtype="float32")
    executor = Executor(engine, RuntimeSettings(max_resident_adapters=2, offload_to=target))
    try:
        before = {}
        for name in ("a", "b", "c"):
            executor.create_adapter(name, LoraSpec(rank=4, seed=len(name) + ord(name))).result(30)
            executor.submit(name, 1, work(name))[1].result(30)
            executor.submit(name, 2, OptimStep(name, AdamParams(learning_rate=0.05)))[1].result(30)
            work_fwd = work(name)
            work_fwd.forward_only = True
            before[name] = executor.submit(name, None, work_fwd)[1].result(30).logprobs[0]
        resident = [a for a in ("a", "b", "c") if engine.is_resident(a)]
        assert resident == ["b", "c"]  # "a" was least recently used when "c" arrived
        work_fwd = work("a")
        work_fwd.forward_only = True
        again = executor.submit("a", None, work_fwd)[1].result(30).logprobs[0]
        assert engine.is_resident("a") and not engine.is_resident("b")
        torch.testing.assert_close(again, before["a"], rtol=0, atol=0)
    finally:
        executor.close()
