"""The per-adapter AdamW equals torch.optim.AdamW, clipping included, and rejects bad params."""

from __future__ import annotations

import pytest
import torch

from loraplane.core import errors
from loraplane.runtime import optim


def _params(seed: int) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.nn.Parameter(torch.randn(4, 8, generator=g)),
        "b": torch.nn.Parameter(torch.randn(16, 4, generator=g)),
    }


@pytest.mark.parametrize(
    "hp",
    [
        optim.AdamParams(),
        optim.AdamParams(learning_rate=1e-2, beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=0.1),
        optim.AdamParams(learning_rate=3e-3, weight_decay=0.01, grad_clip_norm=0.5),
        optim.AdamParams(learning_rate=3e-3, grad_clip_norm=1e6),
    ],
)
def test_adamw_step_equals_torch_adamw_over_several_steps(hp):
    ours = _params(0)
    theirs = _params(0)
    reference = torch.optim.AdamW(
        list(theirs.values()),
        lr=hp.learning_rate,
        betas=(hp.beta1, hp.beta2),
        eps=hp.eps,
        weight_decay=hp.weight_decay,
        foreach=False,
    )
    state = optim.AdamState()
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = {k: torch.randn(p.shape, generator=g) * 3 for k, p in ours.items()}
        for k in ours:
            ours[k].grad = grads[k].clone()
            theirs[k].grad = grads[k].clone()
        metrics = optim.adamw_step(ours, state, hp)
        expected_norm = torch.nn.utils.clip_grad_norm_(
            list(theirs.values()), hp.grad_clip_norm if hp.grad_clip_norm > 0 else float("inf")
        )
        reference.step()
        reference.zero_grad()
        assert metrics["grad_norm:mean"] == pytest.approx(float(expected_norm), rel=1e-6)
    assert state.step == 5
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-7)
        assert ours[k].grad is None
        torch.testing.assert_close(state.exp_avg[k], reference.state[theirs[k]]["exp_avg"], rtol=0, atol=1e-7)


def test_clipping_scales_by_the_adapters_own_global_norm():
    params = {"x": torch.nn.Parameter(torch.zeros(2))}
    params["x"].grad = torch.tensor([3.0, 4.0])  # norm 5
    state = optim.AdamState()
    optim.adamw_step(params, state, optim.AdamParams(learning_rate=0.0, grad_clip_norm=1.0))
    # first moment after one step = (1 - beta1) * clipped grad
    torch.testing.assert_close(state.exp_avg["x"], 0.1 * torch.tensor([3.0, 4.0]) / (5 + 1e-6))


@pytest.mark.parametrize(
    ("norm", "max_norm", "expected"),
    [(5.0, 0.0, 1.0), (5.0, 10.0, 1.0), (5.0, 1.0, 1.0 / (5.0 + 1e-6)), (float("nan"), 1.0, 1.0)],
)
def test_clip_coefficient(norm, max_norm, expected):
    assert optim.clip_coefficient(norm, max_norm) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"learning_rate": -1.0}, "adam_params.learning_rate"),
        ({"beta1": 1.0}, "adam_params.beta1"),
        ({"beta2": -0.1}, "adam_params.beta2"),
        ({"eps": float("nan")}, "adam_params.eps"),
        ({"weight_decay": -0.5}, "adam_params.weight_decay"),
        ({"grad_clip_norm": float("inf")}, "adam_params.grad_clip_norm"),
    ],
)
def test_bad_adam_params_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(errors.InvalidInput) as info:
        optim.AdamParams(**kwargs)
    assert info.value.field == field
