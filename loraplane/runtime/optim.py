"""AdamW over one adapter's own tensors, with clipping by that adapter's own global grad norm.

Callers: `loraplane.runtime.adapters.AdapterStore.optim_step` (one `AdamState` per adapter) and
`loraplane.runtime.checkpoints` (which saves and restores `AdamState.state_dict()`).

## Why not torch.optim
Each adapter has its own hyperparameters on every call (Tinker sends `AdamParams` with each
`optim_step`), its own step counter and its own clipping norm, and its state must travel with the
adapter when it is offloaded or saved. A small explicit state per adapter keeps that plain. The
update is written to equal `torch.optim.AdamW` (single-tensor path) operation for operation, which
`tests/runtime/test_engine_optim.py` checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from loraplane.core import errors


@dataclass(frozen=True)
class AdamParams:
    """Tinker's `AdamParams`: AdamW with decoupled weight decay; `grad_clip_norm` 0 = no clipping."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        checks = (
            ("learning_rate", self.learning_rate >= 0),
            ("beta1", 0 <= self.beta1 < 1),
            ("beta2", 0 <= self.beta2 < 1),
            ("eps", self.eps >= 0),
            ("weight_decay", self.weight_decay >= 0),
            ("grad_clip_norm", self.grad_clip_norm >= 0),
        )
        for name, ok in checks:
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                raise errors.InvalidInput(f"adam_params.{name} out of range: {value}", field=f"adam_params.{name}")


@dataclass
class AdamState:
    """The moments of one adapter's tensors, keyed by the tensor's name, and the step count."""

    #: Optimizer steps taken (the `t` of Adam's bias correction).
    step: int = 0
    #: tensor name -> first moment.
    exp_avg: dict[str, torch.Tensor] = field(default_factory=dict)
    #: tensor name -> second moment.
    exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict)

    def state_dict(self) -> dict[str, object]:
        return {"step": self.step, "exp_avg": dict(self.exp_avg), "exp_avg_sq": dict(self.exp_avg_sq)}

    @classmethod
    def from_state_dict(cls, state: dict[str, object], device: torch.device) -> AdamState:
        exp_avg = {k: v.to(device) for k, v in dict(state["exp_avg"]).items()}  # type: ignore[call-overload]
        exp_avg_sq = {k: v.to(device) for k, v in dict(state["exp_avg_sq"]).items()}  # type: ignore[call-overload]
        return cls(step=int(state["step"]), exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)  # type: ignore[call-overload]

    def tensors(self) -> list[torch.Tensor]:
        return list(self.exp_avg.values()) + list(self.exp_avg_sq.values())

    def move(self, device: torch.device | str) -> None:
        """Move every moment to `device` (offload and restore)."""
        self.exp_avg = {k: v.to(device) for k, v in self.exp_avg.items()}
        self.exp_avg_sq = {k: v.to(device) for k, v in self.exp_avg_sq.items()}


def global_grad_norm(grads: list[torch.Tensor]) -> float:
    """The L2 norm of all `grads` together, as `torch.nn.utils.clip_grad_norm_` computes it. Pure."""
    if not grads:
        return 0.0
    norms = torch._foreach_norm([g.detach() for g in grads], 2.0)
    return float(torch.linalg.vector_norm(torch.stack(norms), 2.0))


def clip_coefficient(total_norm: float, max_norm: float) -> float:
    """The factor grads are multiplied by; 1.0 when clipping is off or not needed.

    Pure; called by `adamw_step`. Matches `clip_grad_norm_`: `max_norm / (norm + 1e-6)`, capped at 1.
    """
    if max_norm <= 0 or not math.isfinite(total_norm):
        return 1.0
    return min(1.0, max_norm / (total_norm + 1e-6))


@torch.no_grad()
def adamw_step(params: dict[str, torch.nn.Parameter], state: AdamState, hp: AdamParams) -> dict[str, float]:
    """Apply one AdamW step to `params` from their `.grad`, then clear the grads.

    Tensors without a grad (not reached by any loss since the last step) count as zero grads, so
    that every tensor's moments advance together as in torch's AdamW over a full param group.
    Returns metrics: the pre-clip global grad norm and the learning rate.
    """
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)) for name, p in params.items()}
    total_norm = global_grad_norm(list(grads.values()))
    if not math.isfinite(total_norm):
        # One overflowed gradient would turn every weight and both moments into NaN for good:
        # refuse the step, keep the adapter as it was, and drop the bad gradients so that the
        # next forward_backward starts clean.
        for p in params.values():
            p.grad = None
        raise errors.InvalidInput(
            f"the accumulated gradient norm is {total_norm}: optim_step was skipped, the weights and "
            "optimizer state are unchanged and the gradients were discarded; look for overflowing "
            "loss inputs (advantages, weights, logprobs) or a learning rate that diverged",
            field="gradients",
        )
    coef = clip_coefficient(total_norm, hp.grad_clip_norm)
    if coef != 1.0:
        for g in grads.values():
            g.mul_(coef)
    state.step += 1
    t = state.step
    bias_correction1 = 1 - hp.beta1**t
    bias_correction2_sqrt = math.sqrt(1 - hp.beta2**t)
    step_size = hp.learning_rate / bias_correction1
    names = list(params)
    for name in names:
        if name not in state.exp_avg:
            state.exp_avg[name] = torch.zeros_like(params[name], memory_format=torch.preserve_format)
            state.exp_avg_sq[name] = torch.zeros_like(params[name], memory_format=torch.preserve_format)
    # The same elementwise operations, in the same order, as torch's single-tensor AdamW; the
    # foreach forms only save Python overhead over an adapter's many small tensors.
    ps = [params[n].data for n in names]
    gs = [grads[n] for n in names]
    m = [state.exp_avg[n] for n in names]
    v = [state.exp_avg_sq[n] for n in names]
    if hp.weight_decay != 0:
        torch._foreach_mul_(ps, 1 - hp.learning_rate * hp.weight_decay)
    torch._foreach_lerp_(m, gs, 1 - hp.beta1)
    torch._foreach_mul_(v, hp.beta2)
    torch._foreach_addcmul_(v, gs, gs, value=1 - hp.beta2)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, hp.eps)
    torch._foreach_addcdiv_(ps, m, denom, value=-step_size)
    for p in params.values():
        p.grad = None
    return {"grad_norm:mean": total_norm, "learning_rate:mean": hp.learning_rate}
