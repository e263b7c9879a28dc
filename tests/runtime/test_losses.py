"""Tinker's losses against hand-computed values, their gradients, and input validation."""

from __future__ import annotations

import math

import pytest
import torch

from loraplane.core import errors
from loraplane.runtime import losses

LP = [-1.0, -2.0]
Q = [-1.5, -1.0]
ADV = [2.0, -1.0]
R0, R1 = math.exp(0.5), math.exp(-1.0)


def _inputs(**extra: list[float]) -> dict[str, torch.Tensor]:
    base = {"target_tokens": torch.tensor([3, 4]), "logprobs": torch.tensor(Q), "advantages": torch.tensor(ADV)}
    base.update({k: torch.tensor(v) for k, v in extra.items()})
    return base


# (loss, extra inputs, config, expected loss, expected d loss / d lp)
CASES = [
    ("cross_entropy", {}, {}, 3.0, [-1.0, -1.0]),
    ("cross_entropy", {"weights": [0.5, -2.0]}, {}, -3.5, [-0.5, 2.0]),
    ("cross_entropy", {"weights": [0.0, 1.0]}, {}, 2.0, [0.0, -1.0]),
    ("importance_sampling", {}, {}, -(R0 * 2.0 - R1), [-R0 * 2.0, R1]),
    ("ppo", {}, {}, -(1.2 * 2.0 - 0.8), [0.0, 0.0]),
    ("ppo", {}, {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5}, -(1.5 * 2.0 - 0.5), [0.0, 0.0]),
    ("ppo", {}, {"clip_low_threshold": 0.1, "clip_high_threshold": 10.0}, -(R0 * 2.0 - R1), [-R0 * 2.0, R1]),
    ("cispo", {}, {}, -(1.2 * -1.0 * 2.0 + 0.8 * -2.0 * -1.0), [-1.2 * 2.0, 0.8]),
    ("dro", {}, {"beta": 0.5}, 0.3125, [-(2.0 - 0.5 * 0.5), -(-1.0 - 0.5 * -1.0)]),
    ("dro", {}, {"beta": 0.0}, -(-2.0 + 2.0), [-2.0, 1.0]),
]


@pytest.mark.parametrize(("loss_fn", "extra", "config", "expected", "expected_grad"), CASES)
def test_loss_matches_hand_computed_value_and_gradient(loss_fn, extra, config, expected, expected_grad):
    lp = torch.tensor(LP, requires_grad=True)
    cfg = losses.resolve_config(loss_fn, config)
    loss = losses.compute_loss(loss_fn, lp, _inputs(**extra), cfg)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.tensor(expected_grad), rtol=1e-6, atol=1e-6)


def test_cross_entropy_gradient_with_arbitrary_real_weights_is_minus_the_weights():
    torch.manual_seed(0)
    weights = torch.randn(7) * 3
    lp = torch.randn(7, requires_grad=True)
    loss = losses.compute_loss("cross_entropy", lp, {"weights": weights}, {})
    loss.backward()
    torch.testing.assert_close(lp.grad, -weights)


def test_losses_are_sums_over_tokens_not_means():
    lp = torch.full((10,), -1.0)
    assert float(losses.compute_loss("cross_entropy", lp, {}, {})) == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("loss_fn", "inputs", "n", "field"),
    [
        ("cross_entropy", {}, 2, "data[0].loss_fn_inputs.target_tokens"),
        ("importance_sampling", {"target_tokens": [1, 2], "logprobs": [0.0, 0.0]}, 2, "data[0].loss_fn_inputs.advantages"),
        ("ppo", {"target_tokens": [1, 2], "advantages": [0.0, 0.0]}, 2, "data[0].loss_fn_inputs.logprobs"),
        ("cross_entropy", {"target_tokens": [1, 2, 3]}, 2, "data[0].loss_fn_inputs.target_tokens"),
        ("cross_entropy", {"target_tokens": [1, 2], "weights": [1.0]}, 2, "data[0].loss_fn_inputs.weights"),
        ("dro", {"target_tokens": [1, 2], "logprobs": [0.0, float("nan")], "advantages": [0.0, 0.0]}, 2,
         "data[0].loss_fn_inputs.logprobs"),
        ("nope", {"target_tokens": [1, 2]}, 2, "loss_fn"),
        ("cross_entropy", {"target_tokens": [1, 2], "weights": "heavy"}, 2, "data[0].loss_fn_inputs.weights"),
    ],
)
def test_bad_loss_inputs_are_rejected_naming_the_field(loss_fn, inputs, n, field):
    tensors = {k: v if isinstance(v, str) else torch.tensor(v) for k, v in inputs.items()}
    with pytest.raises(errors.InvalidInput) as info:
        losses.check_inputs(loss_fn, tensors, n, "data[0].loss_fn_inputs")
    assert info.value.field == field


@pytest.mark.parametrize(
    ("loss_fn", "config", "field"),
    [
        ("dro", {}, "loss_fn_config.beta"),
        ("ppo", {"clip_low_threshold": float("inf")}, "loss_fn_config.clip_low_threshold"),
        ("cispo", {"clip_low_threshold": 1.5, "clip_high_threshold": 1.2}, "loss_fn_config.clip_low_threshold"),
        ("ppo", {"clip_high_threshold": "high"}, "loss_fn_config.clip_high_threshold"),
        ("sft", {}, "loss_fn"),
    ],
)
def test_bad_loss_config_is_rejected_naming_the_field(loss_fn, config, field):
    with pytest.raises(errors.InvalidInput) as info:
        losses.resolve_config(loss_fn, config)
    assert info.value.field == field


def test_config_defaults_are_tinkers_clip_thresholds():
    assert losses.resolve_config("ppo", {}) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    assert losses.resolve_config("cispo", {"unrelated": 1.0}) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
