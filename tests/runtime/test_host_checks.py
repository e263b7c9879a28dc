"""Request checks on the event loop: same answers as torch, and no torch op (no GIL handoff) on the way."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from loraplane.core import errors
from loraplane.runtime import host_checks, losses
from loraplane.runtime.passes import TokenLimits


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("values", [
    torch.tensor([5, -3, 258, 0]),
    torch.tensor([7], dtype=torch.int32),
    torch.arange(12).view(3, 4)[:, 1],  # a strided view
    torch.tensor([4, 9], dtype=torch.uint8),
])
def test_value_range_is_the_tensors_min_and_max(values: torch.Tensor) -> None:
    assert host_checks.value_range(values) == (int(values.min()), int(values.max()))


@pytest.mark.parametrize(("values", "finite"), [
    (torch.tensor([0.5, -2.0]), True),
    (torch.tensor([0.5, float("nan")]), False),
    (torch.tensor([float("-inf")], dtype=torch.float64), False),
    (torch.tensor([1.0, float("inf")], dtype=torch.bfloat16), False),  # no NumPy dtype: torch decides
    (torch.tensor([1.0, 2.0], requires_grad=True), True),
    (torch.tensor([3, 4]), True),
])
def test_all_finite_agrees_with_torch(values: torch.Tensor, finite: bool) -> None:
    assert host_checks.all_finite(values) is finite


def test_checking_a_training_datum_runs_no_torch_op() -> None:
    limits = TokenLimits(max_positions=64, vocab_size=259)
    tokens = torch.tensor([3, 40, 258, 7])
    inputs = {"target_tokens": torch.tensor([40, 258, 7, 9]), "logprobs": torch.zeros(4),
              "advantages": torch.tensor([0.5, -1.0, 0.0, 2.0])}
    with _CountOps() as counted:
        n = limits.check_tokens(tokens, "data[0].model_input")
        losses.check_inputs("importance_sampling", inputs, n, "data[0].loss_fn_inputs")
        limits.check_range(inputs["target_tokens"], "data[0].loss_fn_inputs.target_tokens")
    # `Tensor.numpy()` detaches inside its own call, which keeps the GIL; nothing else runs
    assert set(counted.ops) <= {"aten.detach.default"}, counted.ops


@pytest.mark.parametrize(("ids", "shown"), [([3, 259], "3..259"), ([-1, 8], "-1..8")])
def test_an_id_outside_the_vocabulary_is_refused_with_the_range_found(ids: list[int], shown: str) -> None:
    with pytest.raises(errors.InvalidInput, match=rf"0\.\.258 \(the vocabulary\); got {shown}") as info:
        TokenLimits(max_positions=64, vocab_size=259).check_range(torch.tensor(ids), "prompt")
    assert info.value.field == "prompt"
