"""Tinker's built-in losses, as token-level sums over one datum.

Callers: the batched passes (`loraplane.runtime.passes.PassRunner`) validate each work with
`check_loss_name`, `resolve_config` and `check_inputs` before the forward pass, then call
`compute_loss` per datum on the learner's log-probabilities.

Every loss takes `lp`, the learner's log p(target_tokens[i] | tokens[:i+1]) of shape (N,), and the
datum's per-token inputs of shape (N,); it returns a scalar SUM over tokens (Tinker does not
average). `q` is the sampler's log-probability (`logprobs` input) and `A` the advantage.

| loss | formula |
|---|---|
| cross_entropy | `-(lp * weights).sum()`; `weights` default to 1 and may be any real numbers |
| importance_sampling | `-(exp(lp - q) * A).sum()` |
| ppo | `-min(r * A, clip(r, lo, hi) * A).sum()`, `r = exp(lp - q)` |
| cispo | `-(sg(clip(r, lo, hi)) * lp * A).sum()` (sg = stop-gradient) |
| dro | `-(lp * A - 0.5 * beta * (lp - q) ** 2).sum()` |
| gspo | GSPO-token: `s = exp(mean over M of (sg(lp) - q))`, `r = s * exp(lp - sg(lp))`, then the PPO form with `r` |
| stable_reinforce | `-(m * sg(min(r, c)) * A * lp).sum() + kl_coeff * (m * (r - 1 - (lp - q_rec))).sum()`, `r = exp(lp - q_rec)` |

For `gspo`, M is the set of positions where `sequence_ratio_mask` is non-zero (default: where the
advantage is non-zero); an empty M gives `s = 1`. For `stable_reinforce`, `q_rec` and `m` are not
sent by the client: the engine fills them from the sequences recorded at sampling time
(`loraplane.runtime.stability`) as the inputs `STABILITY_LOGPROBS` and `STABILITY_MASK`. The
choices behind both losses are in docs/losses.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from loraplane.core import errors
from loraplane.runtime import host_checks

#: Per-token inputs each loss requires (besides `target_tokens`, which every loss requires).
REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens",),
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
    "cispo": ("target_tokens", "logprobs", "advantages"),
    "dro": ("target_tokens", "logprobs", "advantages"),
    "gspo": ("target_tokens", "logprobs", "advantages"),
    "stable_reinforce": ("target_tokens", "advantages"),
}
#: Optional per-token inputs a loss reads (`logprobs` of stable_reinforce is checked, not read).
OPTIONAL_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("weights",),
    "gspo": ("sequence_ratio_mask",),
    "stable_reinforce": ("logprobs",),
}
#: Inputs the engine adds for stable_reinforce from the recorded sequences (never read from clients).
STABILITY_LOGPROBS = "stability/sampler_logprobs"
STABILITY_MASK = "stability/sampled_mask"
#: Config keys each loss reads, with their defaults (None = required).
CONFIG_DEFAULTS: dict[str, dict[str, float | None]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "dro": {"beta": None},
    "gspo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "stable_reinforce": {"kl_coeff": 0.0, "clip_high_threshold": 1.0},
}
LOSS_NAMES: tuple[str, ...] = tuple(REQUIRED_INPUTS)


def check_loss_name(loss_fn: str) -> None:
    """Raise InvalidInput(field="loss_fn") for a loss we do not implement. Pure; called by the engine."""
    if loss_fn not in REQUIRED_INPUTS:
        raise errors.InvalidInput(
            f"unknown loss_fn {loss_fn!r}; supported: {', '.join(LOSS_NAMES)}", field="loss_fn"
        )


def check_inputs(loss_fn: str, inputs: Mapping[str, torch.Tensor], n_tokens: int, prefix: str) -> None:
    """Check that the datum carries every input the loss needs, each of shape (n_tokens,).

    Pure; called by `PassRunner.validate` for every datum. `prefix` is the datum's field path
    (e.g. `data[3].loss_fn_inputs`) so that the error names the exact field.
    """
    check_loss_name(loss_fn)
    if not isinstance(inputs, Mapping):
        raise errors.InvalidInput("loss inputs must map names to tensors", field=prefix)
    for key in REQUIRED_INPUTS[loss_fn]:
        if key not in inputs:
            raise errors.InvalidInput(f"loss {loss_fn!r} needs input {key!r}", field=f"{prefix}.{key}")
    for key in REQUIRED_INPUTS[loss_fn] + OPTIONAL_INPUTS.get(loss_fn, ()):
        if key not in inputs:
            continue
        value = inputs[key]
        if not isinstance(value, torch.Tensor):
            raise errors.InvalidInput(f"{key} must be a tensor, got {type(value).__name__}", field=f"{prefix}.{key}")
        if tuple(value.shape) != (n_tokens,):
            raise errors.InvalidInput(
                f"{key} has shape {list(value.shape)}, expected [{n_tokens}] (one per input token)",
                field=f"{prefix}.{key}",
            )
        if key != "target_tokens" and not host_checks.all_finite(value):
            raise errors.InvalidInput(f"{key} holds NaN or infinite values", field=f"{prefix}.{key}")


def resolve_config(loss_fn: str, config: Mapping[str, float]) -> dict[str, float]:
    """The loss's config with defaults filled in; keys the loss does not read are ignored.

    Pure; called by the engine at validation and before computing the loss.
    """
    check_loss_name(loss_fn)
    out: dict[str, float] = {}
    for key, default in CONFIG_DEFAULTS[loss_fn].items():
        value = config.get(key, default)
        if value is None:
            raise errors.InvalidInput(f"loss {loss_fn!r} needs config {key!r}", field=f"loss_fn_config.{key}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise errors.InvalidInput(f"{key} must be a number, got {value!r}", field=f"loss_fn_config.{key}") from None
        if not math.isfinite(number):
            raise errors.InvalidInput(f"{key} must be finite, got {number}", field=f"loss_fn_config.{key}")
        out[key] = number
    if loss_fn == "stable_reinforce":
        if out["kl_coeff"] < 0:
            raise errors.InvalidInput(f"kl_coeff must be >= 0, got {out['kl_coeff']}", field="loss_fn_config.kl_coeff")
        if out["clip_high_threshold"] <= 0:
            raise errors.InvalidInput(
                f"clip_high_threshold must be > 0, got {out['clip_high_threshold']}",
                field="loss_fn_config.clip_high_threshold",
            )
    if "clip_low_threshold" in out and out["clip_low_threshold"] > out["clip_high_threshold"]:
        raise errors.InvalidInput(
            "clip_low_threshold must not exceed clip_high_threshold", field="loss_fn_config.clip_low_threshold"
        )
    return out


def _cross_entropy(lp: torch.Tensor, inputs: Mapping[str, torch.Tensor], cfg: Mapping[str, float]) -> torch.Tensor:
    weights = inputs.get("weights")
    if weights is None:
        return -lp.sum()
    return -(lp * weights).sum()


def _importance_sampling(lp: torch.Tensor, inputs: Mapping[str, torch.Tensor], cfg: Mapping[str, float]) -> torch.Tensor:
    ratio = torch.exp(lp - inputs["logprobs"])
    return -(ratio * inputs["advantages"]).sum()


def _ppo(lp: torch.Tensor, inputs: Mapping[str, torch.Tensor], cfg: Mapping[str, float]) -> torch.Tensor:
    adv = inputs["advantages"]
    ratio = torch.exp(lp - inputs["logprobs"])
    clipped = ratio.clamp(cfg["clip_low_threshold"], cfg["clip_high_threshold"])
    return -torch.minimum(ratio * adv, clipped * adv).sum()


def _cispo(lp: torch.Tensor, inputs: Mapping[str, torch.Tensor], cfg: Mapping[str, float]) -> torch.Tensor:
    ratio = torch.exp(lp - inputs["logprobs"]).detach()
    clipped = ratio.clamp(cfg["clip_low_threshold"], cfg["clip_high_threshold"])
    return -(clipped * lp * inputs["advantages"]).sum()


def _dro(lp: torch.Tensor, inputs: Mapping[str, torch.Tensor], cfg: Mapping[str, float]) -> torch.Tensor:
    diff = lp - inputs["logprobs"]
    return -(lp * inputs["advantages"] - 0.5 * cfg["beta"] * diff * diff).sum()


def _gspo(lp: torch.Tensor, inputs: Mapping[str, torch.Tensor], cfg: Mapping[str, float]) -> torch.Tensor:
    adv = inputs["advantages"]
    mask = inputs.get("sequence_ratio_mask")
    in_ratio = (mask != 0) if mask is not None else (adv != 0)
    token_log_ratio = lp.detach() - inputs["logprobs"]
    if bool(in_ratio.any()):
        seq_log_ratio = token_log_ratio[in_ratio].mean()
    else:
        seq_log_ratio = torch.zeros((), dtype=lp.dtype, device=lp.device)
    ratio = torch.exp(seq_log_ratio + lp - lp.detach())
    clipped = ratio.clamp(cfg["clip_low_threshold"], cfg["clip_high_threshold"])
    return -torch.minimum(ratio * adv, clipped * adv).sum()


def _stable_reinforce(lp: torch.Tensor, inputs: Mapping[str, torch.Tensor], cfg: Mapping[str, float]) -> torch.Tensor:
    mask = inputs[STABILITY_MASK]
    log_ratio = lp - inputs[STABILITY_LOGPROBS]
    ratio = torch.exp(log_ratio)
    weight = ratio.detach().clamp(max=cfg["clip_high_threshold"])
    policy = -(mask * weight * inputs["advantages"] * lp).sum()
    if cfg["kl_coeff"] == 0:
        return policy
    return policy + cfg["kl_coeff"] * (mask * (ratio - 1.0 - log_ratio)).sum()


_LOSSES: dict[str, Callable[[torch.Tensor, Mapping[str, torch.Tensor], Mapping[str, float]], torch.Tensor]] = {
    "cross_entropy": _cross_entropy,
    "importance_sampling": _importance_sampling,
    "ppo": _ppo,
    "cispo": _cispo,
    "dro": _dro,
    "gspo": _gspo,
    "stable_reinforce": _stable_reinforce,
}


def compute_loss(
    loss_fn: str, lp: torch.Tensor, inputs: Mapping[str, torch.Tensor], config: Mapping[str, float]
) -> torch.Tensor:
    """The loss of one datum: a 0-d tensor, differentiable in `lp`.

    Args:
        loss_fn: one of `LOSS_NAMES`.
        lp: learner log-probabilities of the target tokens, float32 (N,).
        inputs: the datum's per-token inputs, float32 (N,) (`target_tokens` is not read here).
        config: the resolved config (`resolve_config`).
    """
    check_loss_name(loss_fn)
    if loss_fn == "stable_reinforce" and STABILITY_LOGPROBS not in inputs:
        raise errors.InvalidInput(
            "stable_reinforce needs the sequences recorded at sampling time; the datum was not resolved",
            field="loss_fn_input_spans",
        )
    return _LOSSES[loss_fn](lp, inputs, config)
