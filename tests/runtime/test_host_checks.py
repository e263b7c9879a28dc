"""Request checks on the API's threads: same answers as torch, and no torch kernel on the way (no GIL
handoff, no thread team of the API's own)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinker.proto import tinker_public_pb2 as pb
from torch.utils._python_dispatch import TorchDispatchMode

from loraplane.core import errors
from loraplane.runtime import host_checks, losses, stability, wire
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


def test_decoding_an_int32_loss_input_and_resolving_provenance_run_no_torch_kernel() -> None:
    sid = "s-aaa:sample:0:1:0"
    records = stability.SequenceRecords()
    records.record([sid], [5, 6, 7], [([8, 9], [-0.5, -1.5])])
    provenance = stability.Provenance(
        model_input=(stability.Span("prompt", sid, 0, 3), stability.Span("sampled", sid, 0, 1)),
        targets=(stability.Span("prompt", sid, 1, 2), stability.Span("sampled", sid, 0, 2)),
    )
    tokens, targets, advantages = torch.tensor([5, 6, 7, 8]), torch.tensor([6, 7, 8, 9]), torch.tensor([0.0, 0, 1, 1])
    encoded = pb.Tensor(dtype=pb.DTYPE_INT32, shape=[4], dense=np.array([6, 7, 8, 9], dtype="<i4").tobytes())
    with _CountOps() as counted:
        decoded = wire.decode_tensor(encoded, "data[0].loss_fn_inputs.target_tokens", max_values=4)
        logprobs, mask = stability.resolve(tokens, targets, advantages, provenance, records, "s-aaa", "data[0]")
    # `torch.from_numpy` marks its tensor fresh (`lift_fresh`); neither that nor `detach` runs a kernel
    assert set(counted.ops) <= {"aten.detach.default", "aten.lift_fresh.default"}, counted.ops
    assert decoded.dtype == torch.int64 and decoded.tolist() == [6, 7, 8, 9]
    assert logprobs.tolist() == [0.0, 0.0, -0.5, -1.5] and mask.tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("values", [torch.tensor([1.5, -2.0], dtype=torch.bfloat16), torch.tensor([3, 4]),
                                    torch.tensor([0.5], requires_grad=True)])
def test_host_array_holds_the_values_whatever_the_dtype(values: torch.Tensor) -> None:
    assert host_checks.host_array(values).tolist() == values.detach().float().tolist()
