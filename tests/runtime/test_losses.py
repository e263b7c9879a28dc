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
S_BOTH, S_FIRST = math.exp(-0.25), math.exp(0.5)  # GSPO sequence ratios: mean log-ratio over the mask


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
    # gspo: every token carries s with its own gradient; token 1 is clipped at 0.8 (A < 0).
    ("gspo", {"sequence_ratio_mask": [1.0, 1.0]}, {}, -(2.0 * S_BOTH - 0.8), [-2.0 * S_BOTH, 0.0]),
    # only token 0 in the ratio: s = e^0.5 is clipped to 1.2 for A > 0, left alone for A < 0.
    ("gspo", {"sequence_ratio_mask": [1.0, 0.0]}, {}, -(2.4 - S_FIRST), [0.0, S_FIRST]),
    ("gspo", {"sequence_ratio_mask": [1.0, 1.0]}, {"clip_low_threshold": 0.1, "clip_high_threshold": 10.0},
     -(2.0 * S_BOTH - S_BOTH), [-2.0 * S_BOTH, S_BOTH]),
    # no mask: the ratio is taken over the tokens with non-zero advantage (both here).
    ("gspo", {}, {}, -(2.0 * S_BOTH - 0.8), [-2.0 * S_BOTH, 0.0]),
    # an empty mask gives s = 1 (not NaN).
    ("gspo", {"sequence_ratio_mask": [0.0, 0.0]}, {}, -(2.0 - 1.0), [-2.0, 1.0]),
]


def _stable_inputs(mask: list[float]) -> dict[str, torch.Tensor]:
    return {"advantages": torch.tensor(ADV), losses.STABILITY_LOGPROBS: torch.tensor(Q),
            losses.STABILITY_MASK: torch.tensor(mask)}


# stable_reinforce: weight sg(min(r, c)) on A * lp over sampled tokens, plus kl_coeff * (r - 1 - log r).
STABLE_CASES = [
    ([1.0, 1.0], {}, 2.0 - 2.0 * R1, [-2.0, R1]),
    ([0.0, 1.0], {}, -2.0 * R1, [0.0, R1]),
    ([1.0, 1.0], {"clip_high_threshold": 2.0}, 2.0 * R0 - 2.0 * R1, [-2.0 * R0, R1]),
    ([1.0, 1.0], {"kl_coeff": 0.5}, 2.0 - 2.0 * R1 + 0.5 * ((R0 - 1.5) + R1),
     [-2.0 + 0.5 * (R0 - 1.0), R1 + 0.5 * (R1 - 1.0)]),
]


@pytest.mark.parametrize(("mask", "config", "expected", "expected_grad"), STABLE_CASES)
def test_stable_reinforce_matches_hand_computed_value_and_gradient(mask, config, expected, expected_grad):
    lp = torch.tensor(LP, requires_grad=True)
    cfg = losses.resolve_config("stable_reinforce", config)
    loss = losses.compute_loss("stable_reinforce", lp, _stable_inputs(mask), cfg)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.tensor(expected_grad), rtol=1e-6, atol=1e-6)


def test_stable_reinforce_without_resolved_provenance_is_refused():
    with pytest.raises(errors.InvalidInput) as info:
        losses.compute_loss("stable_reinforce", torch.tensor(LP), {"advantages": torch.tensor(ADV)},
                            losses.resolve_config("stable_reinforce", {}))
    assert info.value.field == "loss_fn_input_spans"


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
        ("gspo", {"target_tokens": [1, 2], "logprobs": [0.0, 0.0], "advantages": [0.0, 0.0],
                  "sequence_ratio_mask": [1.0]}, 2, "data[0].loss_fn_inputs.sequence_ratio_mask"),
        ("stable_reinforce", {"target_tokens": [1, 2]}, 2, "data[0].loss_fn_inputs.advantages"),
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
        ("stable_reinforce", {"kl_coeff": -0.1}, "loss_fn_config.kl_coeff"),
        ("stable_reinforce", {"clip_high_threshold": 0.0}, "loss_fn_config.clip_high_threshold"),
        ("gspo", {"clip_low_threshold": 1.3}, "loss_fn_config.clip_low_threshold"),
    ],
)
def test_bad_loss_config_is_rejected_naming_the_field(loss_fn, config, field):
    with pytest.raises(errors.InvalidInput) as info:
        losses.resolve_config(loss_fn, config)
    assert info.value.field == field


def test_config_defaults_are_tinkers_clip_thresholds():
    assert losses.resolve_config("ppo", {}) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    assert losses.resolve_config("cispo", {"unrelated": 1.0}) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}


def test_stable_reinforce_and_gspo_defaults():
    assert losses.resolve_config("stable_reinforce", {}) == {"kl_coeff": 0.0, "clip_high_threshold": 1.0}
    assert losses.resolve_config("gspo", {}) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
