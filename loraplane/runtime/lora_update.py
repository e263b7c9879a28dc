"""The arithmetic of the multi-adapter LoRA layers: grouped updates with their backward, and the
decode step's update of every row in two batched matmuls.

Callers: `loraplane.runtime.lora.MultiLoraLinear` only; it decides which rows use which adapter
(its router's segments) and hands the layout and the adapters' tensors here.

## Why a hand-written backward
Adapters of equal rank, scaling and row layout run as one group: two batched matmuls forward and
four backward, whatever the group's size. The layer is one `torch.autograd.Function`
(`LoraLinearFn`) so that the updates are added into the base output, and their input gradients
into the base input gradient, inside those matmuls, and each adapter's gradients come out as slices
of one tensor; through autograd every layer paid for a stack node, separate update and gradient
tensors and the adds that join them. `tests/runtime/test_engine_lora_backward.py` checks it
against autograd of the plain formula.

## The decode step
A decode step has one position per row and a handful of rows per adapter, for many adapters. Its
update (`StepUpdate`) runs every adapter present at once: the rows as a (adapters, rows each, in)
batch times the adapters' stacked A's, times their stacked B's (each scaled by its adapter's
scaling when stacked), added into the base output. When every adapter has the same row count (the
usual case: requests of equal `num_samples`, no row stopped early) the rows are a view. With two
row counts (one request with more samples, or one whose rows stopped) they are two runs of views;
the rows of a batch with more are gathered into a padded batch, whose padding adds exact zeros.
On the hidden-512 bench model with one adapter holding a row more than the other seven, a decode
step took 10.9–11.0 ms as two runs of views and 11.4–11.8 ms through the gather
(`bench/decode_layouts.py`). A row's update is the same product of its own adapter's weights as
when its request runs alone; no work is spent on other adapters' weights.
The stacked weights are kept while the set of adapters stays the same (`StackedWeights`), so rows
leaving the batch only rebuild the small index tensors. They are kept, too, when the weights of an
adapter outside the batch change (`MultiLoraLinear.forget_adapter`): in RL, other tenants' optimizer
steps and sampler snapshots land between decode steps all the time. On the hidden-512 bench model,
8 clients sampled at 535 tokens/s beside a ninth adapter training and snapshotting in a loop, and
at 402 when every such change restacked all eight adapters (`bench/sampling_while_training.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from loraplane.runtime.lora import Segment


@dataclass(frozen=True)
class Group:
    """Rows `[start, end)` (cut to `width` positions) of `k` equal-shape adapters of one scaling."""

    start: int
    end: int
    width: int | None
    k: int
    scale: float


class LoraLinearFn(torch.autograd.Function):
    """`base(x)` plus each group's scaled low-rank update, with a hand-written backward pass.

    Called by `lora.MultiLoraLinear.forward` with the layer's groups and their adapters' A and B
    tensors (for each group, its k A's then its k B's). Each group costs two batched matmuls
    forward and four backward, whatever k is, and both the update and the update's share of the
    input gradient are added in place into the base output and the base input gradient, inside
    the matmuls (`baddbmm_`). Autograd would instead stack the adapters' tensors into a graph
    node, build the update and the input gradient as separate tensors and add them. A lone
    adapter runs the same code as a group, so its numbers do not depend on its batch neighbours.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, base: nn.Linear, plan: tuple[Group, ...], *params: torch.Tensor
    ) -> torch.Tensor:
        stacks = stack_groups(plan, params)
        out, hiddens = grouped_forward(x, base, plan, stacks)
        ctx.base, ctx.plan = base, plan
        ctx.save_for_backward(x, *stacks, *hiddens)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *saved = ctx.saved_tensors
        plan: tuple[Group, ...] = ctx.plan
        stacks, hiddens = saved[: 2 * len(plan)], saved[2 * len(plan) :]
        needs = ctx.needs_input_grad
        grad_x = grad_out.matmul(ctx.base.weight) if needs[0] else None
        grads: list[torch.Tensor | None] = []
        n = 3
        for g, group in enumerate(plan):
            a, b, hidden = stacks[2 * g], stacks[2 * g + 1], hiddens[g]
            rows_grad = _block(grad_out, group).to(a.dtype).reshape(group.k, -1, b.shape[1])
            grad_hidden = torch.bmm(rows_grad, b).mul_(group.scale)
            if any(needs[n : n + 2 * group.k]):
                # Contiguous per-adapter slices, which autograd adopts as `.grad` without a copy.
                rows = _block(x, group).to(a.dtype).reshape(group.k, -1, a.shape[2])
                grads.extend(torch.bmm(grad_hidden.transpose(1, 2), rows).unbind(0))
                grads.extend(
                    torch.bmm(hidden.transpose(1, 2), rows_grad)
                    .mul_(group.scale)
                    .transpose(1, 2)
                    .contiguous()
                    .unbind(0)
                )
            else:
                grads.extend([None] * (2 * group.k))
            n += 2 * group.k
            if grad_x is not None:
                _add_product(_block(grad_x, group), grad_hidden, a, group, scale=1.0)
        return (grad_x, None, None, *grads)


def stack_groups(plan: tuple[Group, ...], params: Any) -> list[torch.Tensor]:
    """Each group's A's then B's stacked on a new first dimension: [A_0, B_0, A_1, B_1, ...]."""
    stacks: list[torch.Tensor] = []
    n = 0
    for group in plan:
        stacks.append(_stacked(tuple(params[n : n + group.k])))
        stacks.append(_stacked(tuple(params[n + group.k : n + 2 * group.k])))
        n += 2 * group.k
    return stacks


def grouped_forward(
    x: torch.Tensor, base: nn.Linear, plan: tuple[Group, ...], stacks: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`base(x)` plus each group's update; also the low-rank hiddens (for backward)."""
    out = base(x)
    hiddens: list[torch.Tensor] = []
    for g, group in enumerate(plan):
        a, b = stacks[2 * g], stacks[2 * g + 1]
        rows = _block(x, group).to(a.dtype).reshape(group.k, -1, a.shape[2])
        hidden = torch.bmm(rows, a.transpose(1, 2))
        _add_product(_block(out, group), hidden, b.transpose(1, 2), group)
        hiddens.append(hidden)
    return out, hiddens


def _stacked(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The tensors stacked on a new first dimension (a view for one). Pure; for `LoraLinearFn`."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def _block(t: torch.Tensor, group: Group) -> torch.Tensor:
    """The view of `t` (input, output or a gradient of either) that `group` covers. Pure."""
    if group.start == 0 and group.end == t.shape[0]:
        block = t
    else:
        block = t[group.start : group.end]
    return block if group.width is None else block[:, : group.width]


def _add_product(
    target: torch.Tensor, left: torch.Tensor, right: torch.Tensor, group: Group, scale: float | None = None
) -> None:
    """`target += scale * (left @ right)`, batched over the group's k adapters, in place.

    Called by `LoraLinearFn` for the update (into the base output) and for the update's input
    gradient (into the base input gradient). The product is added inside the matmul; a target
    that is not one contiguous block of the product's dtype is gathered, summed and written back,
    so that every row gets the same arithmetic however it is laid out.
    """
    alpha = group.scale if scale is None else scale
    if target.dtype == left.dtype and target.is_contiguous():
        target.view(group.k, -1, target.shape[-1]).baddbmm_(left, right, alpha=alpha)
        return
    summed = (
        target.to(left.dtype, memory_format=torch.contiguous_format, copy=True)
        .reshape(group.k, -1, target.shape[-1])
        .baddbmm_(left, right, alpha=alpha)
    )
    target.copy_(summed.view(target.shape))


def cut_width(seg: Segment, x: torch.Tensor) -> int | None:
    """The width to cut a 3-D input to for this segment, or None to use all of it. Pure."""
    if seg.width is not None and x.dim() == 3 and seg.width < x.shape[1]:
        return seg.width
    return None


def shape_groups(
    segments: list[Segment], lora_a: dict[str, nn.Parameter], scaling: dict[str, float]
) -> list[list[Segment]]:
    """Runs of adjacent segments with equal row count, width, rank and scaling, batched together.

    Pure; called by `lora.MultiLoraLinear` for the segments of adapters this layer holds. One
    scaling per group lets `LoraLinearFn` apply it as the `alpha` of its second matmul.
    """
    groups: list[list[Segment]] = []
    for seg in segments:
        if groups:
            last = groups[-1][-1]
            if (
                last.end == seg.start
                and last.end - last.start == seg.end - seg.start
                and last.width == seg.width
                and lora_a[last.adapter_id].shape == lora_a[seg.adapter_id].shape  # type: ignore[index]
                and scaling[last.adapter_id] == scaling[seg.adapter_id]  # type: ignore[index]
            ):
                groups[-1].append(seg)
                continue
        groups.append([seg])
    return groups


@dataclass(frozen=True)
class StackedWeights:
    """Adapters `ids`' A's stacked (k, rank, in), and their B's transposed, times their scalings,
    stacked (k, rank, out). An adapter of a smaller rank is padded with zeros."""

    ids: tuple[str, ...]
    a: torch.Tensor
    b: torch.Tensor


def step_weights(a: torch.Tensor, b: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter's (A, scaling * B^T) as `stack_weights` stacks them; `MultiLoraLinear` keeps
    them per adapter, so that a change of the batch's adapters only copies memory."""
    return a.detach(), (b.detach().t() * scaling).contiguous()


def stack_weights(ids: tuple[str, ...], pieces: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> StackedWeights:
    """Stack the adapters' `step_weights` (see `StackedWeights`). Called when the set of adapters
    in the decode batch changes, or their weights do."""
    ranks = {pieces[i][0].shape[0] for i in ids}
    if len(ranks) == 1:
        return StackedWeights(ids, torch.stack([pieces[i][0] for i in ids]), torch.stack([pieces[i][1] for i in ids]))
    first_a, first_b = pieces[ids[0]]
    a_all = first_a.new_zeros(len(ids), max(ranks), first_a.shape[1])
    b_all = first_b.new_zeros(len(ids), max(ranks), first_b.shape[1])
    for j, adapter_id in enumerate(ids):
        a, b = pieces[adapter_id]
        a_all[j, : a.shape[0]] = a
        b_all[j, : b.shape[0]] = b
    return StackedWeights(ids, a_all, b_all)


#: a decode step's update runs as slices of up to this many runs of adapters with equal row
#: counts; beyond, one padded gather costs less than a pair of matmuls per run (`step_update`)
_MAX_SLICE_RUNS = 2


@dataclass(frozen=True)
class StepUpdate:
    """One layer's LoRA update for a decode step's rows (see the module docstring).

    `runs`, when the adapters' rows lie end to end in `weights.ids` order: (first adapter, end
    adapter, first row, rows each) of each run of adapters with one row count, whose rows are
    views. Otherwise `rows` is a (k, per) index of the rows, padded by repeating an adapter's first
    row, `pad` zeroes the padding's update, and `dest` is `rows` flattened. `whole` marks the
    usual case, one run over every row of the batch: `add_to` then runs two matmuls on views of
    the layer's own input and output and nothing else, since at a decode step's few rows each
    further tensor op costs about as much as the arithmetic.
    """

    weights: StackedWeights
    runs: tuple[tuple[int, int, int, int], ...] = ()
    rows: torch.Tensor | None = None
    pad: torch.Tensor | None = None
    dest: torch.Tensor | None = None
    whole: bool = False
    #: the stacked A's as (k, in, rank) views, for the first matmul
    a_t: torch.Tensor = field(init=False)
    #: each run's (first row, end row, rows each, its A's, its B's), the weights as views
    slices: tuple[tuple[int, int, int, torch.Tensor, torch.Tensor], ...] = field(init=False)

    def __post_init__(self) -> None:
        a_t, b = self.weights.a.transpose(1, 2), self.weights.b
        object.__setattr__(self, "a_t", a_t)
        object.__setattr__(self, "slices", tuple(
            (start, start + (end - first) * per, per, a_t[first:end], b[first:end])
            for first, end, start, per in self.runs))

    def add_to(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """`out[r] += (x[r] @ A_a^T) @ (scale_a * B_a^T)` for every routed row r; rows are dim 0
        of x and out, features their last dim."""
        a_t, b = self.a_t, self.weights.b
        if self.whole and x.dtype == a_t.dtype and out.dtype == a_t.dtype and out.is_contiguous():
            k, per = a_t.shape[0], self.runs[0][3]
            hidden = torch.bmm(x.reshape(k, per, x.shape[-1]), a_t)
            out.view(k, per, out.shape[-1]).baddbmm_(hidden, b)
            return
        x, out = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
        for start, stop, per, run_a, run_b in self.slices:
            hidden = torch.bmm(x[start:stop].view(-1, per, x.shape[-1]).to(a_t.dtype), run_a)
            target = out[start:stop]
            if target.dtype == hidden.dtype:
                target.view(-1, per, target.shape[-1]).baddbmm_(hidden, run_b)
            else:
                target.add_(torch.bmm(hidden, run_b).view(target.shape).to(target.dtype))
        if self.rows is not None:
            assert self.pad is not None and self.dest is not None
            hidden = torch.bmm(x[self.rows].to(a_t.dtype), a_t).mul_(self.pad)
            # the padding adds exact zeros to the rows it repeats
            out.index_add_(0, self.dest, torch.bmm(hidden, b).view(-1, b.shape[-1]).to(out.dtype))


def step_update(segments: list[Segment], weights: StackedWeights, batch_rows: int) -> StepUpdate:
    """The layout of a decode step's update over `segments` (adapters this layer holds, in row
    order) in a batch of `batch_rows` rows. Called once per batch composition; the tensors it
    makes are small index lists."""
    by_id: dict[str, list[int]] = {}
    for seg in segments:
        by_id.setdefault(seg.adapter_id, []).extend(range(seg.start, seg.end))  # type: ignore[arg-type]
    lists = [by_id[i] for i in weights.ids]
    flat = [r for rows in lists for r in rows]
    if flat == list(range(flat[0], flat[0] + len(flat))):
        runs: list[tuple[int, int, int, int]] = []
        for j, rows in enumerate(lists):
            if runs and runs[-1][3] == len(rows):
                runs[-1] = (runs[-1][0], j + 1, runs[-1][2], len(rows))
            else:
                runs.append((j, j + 1, rows[0], len(rows)))
        if len(runs) <= _MAX_SLICE_RUNS:
            return StepUpdate(weights, tuple(runs),
                              whole=len(runs) == 1 and flat[0] == 0 and len(flat) == batch_rows)
    per = max(len(rows) for rows in lists)
    device = weights.a.device
    index = torch.tensor([rows + [rows[0]] * (per - len(rows)) for rows in lists], device=device)
    pad = torch.tensor([[1.0] * len(rows) + [0.0] * (per - len(rows)) for rows in lists], dtype=weights.a.dtype,
                       device=device)[:, :, None]
    return StepUpdate(weights, rows=index, pad=pad, dest=index.reshape(-1))
