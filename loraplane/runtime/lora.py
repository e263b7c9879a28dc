"""Multi-adapter LoRA layers: one frozen base `nn.Linear`, many adapters, rows routed per forward.

Callers: `loraplane.runtime.engine.Engine` wraps the base model's target linears once at load
(`wrap_linears`), splits each `forward_backward` into passes (`plan_passes`) and sets the rows'
segments (`segments_for`) on the shared `LoraRouter` around every forward pass.
`loraplane.runtime.checkpoints` reads and writes the per-adapter tensors by PEFT's key names.

## Why our own layers
Switching a shared PEFT model's active adapter (`set_adapter`) serialises adapters and, when done
from several threads, trains the wrong weights. Here every adapter's weights sit side by side in the
same layer and each forward pass carries a routing table: rows `[start, end)` of the batch use
adapter `a`. The base matmul runs once for the whole batch; each adapter's low-rank update runs on
its own contiguous slice of rows, so the per-layer cost is one Python iteration per adapter present
in the batch, never per row.

## Why a hand-written backward
Adapters of equal rank, scaling and row layout run as one group: two batched matmuls forward and
four backward, whatever the group's size. The layer is one `torch.autograd.Function`
(`_LoraLinear`) so that the updates are added into the base output, and their input gradients into
the base input gradient, inside those matmuls, and each adapter's gradients come out as slices of
one tensor; through autograd every layer paid for a stack node, separate update and gradient
tensors and the adds that join them. `tests/runtime/test_engine_lora_backward.py` checks it
against autograd of the plain formula.

## State
Per-adapter state lives in dicts keyed by adapter id, named in `ADAPTER_TENSORS` (trainable
tensors) and `ADAPTER_SCALARS` (plain numbers), so that delete, copy and offload stay generic.
The tensors are `nn.Parameter`s held in plain dicts, not registered submodules: the base model's
`state_dict()` and `parameters()` stay exactly those of the base model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: Names of the per-adapter tensor dicts of a `MultiLoraLinear` (PEFT's names for the same weights).
ADAPTER_TENSORS: tuple[str, ...] = ("lora_A", "lora_B")
#: Names of the per-adapter scalar dicts of a `MultiLoraLinear`.
ADAPTER_SCALARS: tuple[str, ...] = ("scaling",)

#: Module-name suffixes of each Tinker `train_*` switch (Llama/Qwen/Mistral naming).
ATTN_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES: tuple[str, ...] = ("lm_head",)
ALL_TARGETS: tuple[str, ...] = ATTN_MODULES + MLP_MODULES + UNEMBED_MODULES


@dataclass(frozen=True)
class Segment:
    """Rows `[start, end)` of the batch dimension use adapter `adapter_id` (None: base model only).

    `width`, when set, is the longest true length among these rows of a right-padded batch: the
    update skips the padding beyond it, which saves work and makes the adapter's reductions run
    over exactly the positions they would cover were its rows batched alone.
    """

    adapter_id: str | None
    start: int
    end: int
    width: int | None = None


class LoraRouter:
    """The per-forward batch layout shared by every wrapped layer of one model.

    The engine sets it around a forward pass with `route()`: which adapter each row uses (read by
    `MultiLoraLinear`) and, for right-padded batches, the rows grouped by their true length (read
    by the packed attention of `loraplane.runtime.model_host`). Outside a pass no LoRA update applies.
    """

    def __init__(self) -> None:
        #: Segments of the forward pass now running; empty outside a pass.
        self.segments: tuple[Segment, ...] = ()
        #: (length, rows) groups of a right-padded batch; None when every row fills the batch.
        self.length_groups: tuple[tuple[int, slice | torch.Tensor], ...] | None = None
        #: the pass's rows all start at one position, so causal attention needs no mask (sampling)
        self.mask_free = False
        #: a decode step's rows grouped by key length, as (keys, rows); attention runs per group
        self.kv_groups: tuple[tuple[int, slice], ...] | None = None

    @contextlib.contextmanager
    def route(
        self,
        segments: list[Segment] | tuple[Segment, ...],
        length_groups: tuple[tuple[int, slice | torch.Tensor], ...] | None = None,
        mask_free: bool = False,
        kv_groups: tuple[tuple[int, slice], ...] | None = None,
    ) -> Iterator[None]:
        previous = self.segments, self.length_groups, self.mask_free, self.kv_groups
        if not (isinstance(segments, tuple) and all(s.adapter_id is not None and s.end > s.start for s in segments)):
            segments = tuple(s for s in segments if s.adapter_id is not None and s.end > s.start)
        self.segments = segments  # the same tuple across decode steps lets layers reuse their layout
        self.length_groups = length_groups
        self.mask_free = mask_free
        self.kv_groups = kv_groups
        try:
            yield
        finally:
            self.segments, self.length_groups, self.mask_free, self.kv_groups = previous


class MultiLoraLinear(nn.Module):
    """A frozen `nn.Linear` plus any number of LoRA adapters, each applied to its own rows.

    `forward(x)` returns `base(x) + scale_a * (x_rows @ A_a^T) @ B_a^T` for the rows of each adapter
    `a` named in the router's segments, and `base(x)` for every other row.
    """

    def __init__(self, base: nn.Linear, router: LoraRouter) -> None:
        super().__init__()
        self.base_layer = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self._router = router
        #: adapter id -> A, shape (rank, in_features), fp32 trainable.
        self.lora_A: dict[str, nn.Parameter] = {}
        #: adapter id -> B, shape (out_features, rank), fp32 trainable.
        self.lora_B: dict[str, nn.Parameter] = {}
        #: adapter id -> alpha / rank.
        self.scaling: dict[str, float] = {}
        #: the last no-grad layout: (segments, shape, kind, its tensors); see `_forward_no_grad`
        self._decode_cache: tuple[Any, ...] | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, for code that inspects `module.weight` (e.g. tied-embedding checks)."""
        return self.base_layer.weight

    def add_adapter(self, adapter_id: str, rank: int, alpha: float, generator: torch.Generator) -> None:
        """Create adapter weights initialised as PEFT does: A kaiming-uniform(a=sqrt(5)), B zeros."""
        a = torch.empty(rank, self.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        device = self.base_layer.weight.device
        self.lora_A[adapter_id] = nn.Parameter(a.to(device))
        self.lora_B[adapter_id] = nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        self.scaling[adapter_id] = alpha / rank
        self.forget_layout()

    def remove_adapter(self, adapter_id: str) -> None:
        for name in ADAPTER_TENSORS + ADAPTER_SCALARS:
            getattr(self, name).pop(adapter_id, None)
        self.forget_layout()

    def has_adapter(self, adapter_id: str) -> bool:
        return adapter_id in self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._forward_no_grad(x)
        segments = [s for s in self._router.segments if s.adapter_id in self.lora_A]
        if not segments:
            return self.base_layer(x)
        if self.base_layer.weight.requires_grad:
            raise RuntimeError("MultiLoraLinear trains adapters over a frozen base layer only")
        plan, params = self._plan(segments, x)
        return _LoraLinear.apply(x, self.base_layer, plan, *params)

    def _plan(self, segments: list[Segment], x: torch.Tensor) -> tuple[tuple[_Group, ...], list[torch.Tensor]]:
        plan: list[_Group] = []
        params: list[torch.Tensor] = []
        for group in _shape_groups(segments, self.lora_A, self.scaling):
            ids = [seg.adapter_id for seg in group]
            width = _cut_width(group[0], x)
            plan.append(_Group(group[0].start, group[-1].end, width, len(ids), self.scaling[ids[0]]))  # type: ignore[index]
            params.extend(self.lora_A[i] for i in ids)  # type: ignore[index]
            params.extend(self.lora_B[i] for i in ids)  # type: ignore[index]
        return tuple(plan), params

    def _forward_no_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Sampling's path: the same update without the autograd node. The layout and the
        gathered weights are kept while the batch's segments stay the same object (decode steps);
        the engine drops them (`forget_layout`) whenever it changes weights.

        A decode step (one position per row) runs every adapter in two matmuls: the rows times all
        adapters' A's side by side, masked to each row's own block and scaling, times all B's.
        Each row's update has the same terms as alone (the other blocks are exact zeros), and a
        handful of rows per adapter no longer pay a batched matmul per adapter group.
        """
        routed = self._router.segments
        cached = self._decode_cache
        if cached is None or cached[0] is not routed or cached[1] != x.shape[:-1]:
            segments = [s for s in routed if s.adapter_id in self.lora_A]
            if not segments:
                return self.base_layer(x)
            if x.dim() == 3 and x.shape[1] == 1:
                cached = (routed, x.shape[:-1], "block", *self._block_layout(segments, x.shape[0]))
            else:
                plan, params = self._plan(segments, x)
                cached = (routed, x.shape[:-1], "groups", plan, _stack_groups(plan, params))
            self._decode_cache = cached
        if cached[2] == "groups":
            return _forward(x, self.base_layer, cached[3], cached[4])[0]
        a_all, b_all, mask = cached[3], cached[4], cached[5]
        out = self.base_layer(x)
        flat = out.view(out.shape[0], out.shape[-1])
        hidden = (x.reshape(x.shape[0], x.shape[-1]).to(a_all.dtype) @ a_all.t()).mul_(mask)
        if flat.dtype == hidden.dtype:
            flat.addmm_(hidden, b_all.t())
        else:
            flat.add_((hidden @ b_all.t()).to(flat.dtype))
        return out

    def _block_layout(self, segments: list[Segment], rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All segments' adapters' A's stacked by rank (K, in), their B's side by side (out, K),
        and the (rows, K) mask holding each row's scaling over its own adapter's block."""
        ids = list(dict.fromkeys(s.adapter_id for s in segments))
        offsets, total = {}, 0
        for adapter_id in ids:
            offsets[adapter_id] = total
            total += self.lora_A[adapter_id].shape[0]  # type: ignore[index]
        a_all = torch.cat([self.lora_A[i] for i in ids])  # type: ignore[index]
        b_all = torch.cat([self.lora_B[i] for i in ids], dim=1)  # type: ignore[index]
        mask = torch.zeros(rows, total, dtype=a_all.dtype, device=a_all.device)
        for seg in segments:
            start = offsets[seg.adapter_id]
            rank = self.lora_A[seg.adapter_id].shape[0]  # type: ignore[index]
            mask[seg.start: seg.end, start: start + rank] = self.scaling[seg.adapter_id]  # type: ignore[index]
        return a_all, b_all, mask

    def forget_layout(self) -> None:
        """Drop the kept no-grad layout and stacked weights (weights changed, or moved)."""
        self._decode_cache = None


@dataclass(frozen=True)
class _Group:
    """Rows `[start, end)` (cut to `width` positions) of `k` equal-shape adapters of one scaling."""

    start: int
    end: int
    width: int | None
    k: int
    scale: float


class _LoraLinear(torch.autograd.Function):
    """`base(x)` plus each group's scaled low-rank update, with a hand-written backward pass.

    Called by `MultiLoraLinear.forward` with the layer's groups and their adapters' A and B
    tensors (for each group, its k A's then its k B's). Each group costs two batched matmuls
    forward and four backward, whatever k is, and both the update and the update's share of the
    input gradient are added in place into the base output and the base input gradient, inside
    the matmuls (`baddbmm_`). Autograd would instead stack the adapters' tensors into a graph
    node, build the update and the input gradient as separate tensors and add them. A lone
    adapter runs the same code as a group, so its numbers do not depend on its batch neighbours.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, base: nn.Linear, plan: tuple[_Group, ...], *params: torch.Tensor
    ) -> torch.Tensor:
        stacks = _stack_groups(plan, params)
        out, hiddens = _forward(x, base, plan, stacks)
        ctx.base, ctx.plan = base, plan
        ctx.save_for_backward(x, *stacks, *hiddens)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *saved = ctx.saved_tensors
        plan: tuple[_Group, ...] = ctx.plan
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


def _stack_groups(plan: tuple[_Group, ...], params: Any) -> list[torch.Tensor]:
    """Each group's A's then B's stacked on a new first dimension: [A_0, B_0, A_1, B_1, ...]."""
    stacks: list[torch.Tensor] = []
    n = 0
    for group in plan:
        stacks.append(_stacked(tuple(params[n : n + group.k])))
        stacks.append(_stacked(tuple(params[n + group.k : n + 2 * group.k])))
        n += 2 * group.k
    return stacks


def _forward(
    x: torch.Tensor, base: nn.Linear, plan: tuple[_Group, ...], stacks: list[torch.Tensor]
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
    """The tensors stacked on a new first dimension (a view for one). Pure; for `_LoraLinear`."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def _block(t: torch.Tensor, group: _Group) -> torch.Tensor:
    """The view of `t` (input, output or a gradient of either) that `group` covers. Pure."""
    if group.start == 0 and group.end == t.shape[0]:
        block = t
    else:
        block = t[group.start : group.end]
    return block if group.width is None else block[:, : group.width]


def _add_product(
    target: torch.Tensor, left: torch.Tensor, right: torch.Tensor, group: _Group, scale: float | None = None
) -> None:
    """`target += scale * (left @ right)`, batched over the group's k adapters, in place.

    Called by `_LoraLinear` for the update (into the base output) and for the update's input
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


def _cut_width(seg: Segment, x: torch.Tensor) -> int | None:
    """The width to cut a 3-D input to for this segment, or None to use all of it. Pure."""
    if seg.width is not None and x.dim() == 3 and seg.width < x.shape[1]:
        return seg.width
    return None


def _shape_groups(
    segments: list[Segment], lora_a: dict[str, nn.Parameter], scaling: dict[str, float]
) -> list[list[Segment]]:
    """Runs of adjacent segments with equal row count, width, rank and scaling, batched together.

    Pure; called by `MultiLoraLinear.forward` for the segments of adapters this layer holds. One
    scaling per group lets `_LoraLinear` apply it as the `alpha` of its second matmul.
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


def target_suffixes(train_attn: bool, train_mlp: bool, train_unembed: bool) -> tuple[str, ...]:
    """Module-name suffixes an adapter trains, in Tinker's switch order.

    Pure; called by the engine when it creates an adapter and by checkpoints for the PEFT config.
    """
    out: tuple[str, ...] = ()
    if train_attn:
        out += ATTN_MODULES
    if train_mlp:
        out += MLP_MODULES
    if train_unembed:
        out += UNEMBED_MODULES
    return out


def wrap_linears(model: nn.Module, router: LoraRouter) -> dict[str, MultiLoraLinear]:
    """Replace every `nn.Linear` whose name ends in one of `ALL_TARGETS` by a `MultiLoraLinear`.

    Called once by the engine after loading the base model. Returns the wrapped layers by their
    module name in the base model (`model.layers.0.self_attn.q_proj`, `lm_head`), sorted, which is
    also the order adapter weights are initialised in.
    """
    wrapped: dict[str, MultiLoraLinear] = {}
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in ALL_TARGETS or not isinstance(module, nn.Linear):
            continue
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        layer = MultiLoraLinear(module, router)
        setattr(parent, leaf, layer)
        wrapped[name] = layer
    return dict(sorted(wrapped.items()))


def layers_for(layers: dict[str, MultiLoraLinear], suffixes: tuple[str, ...]) -> dict[str, MultiLoraLinear]:
    """The wrapped layers whose module name ends in one of `suffixes`. Pure; called by the engine."""
    return {name: layer for name, layer in layers.items() if name.rsplit(".", 1)[-1] in suffixes}


def segments_for(adapter_of_row: list[str], lengths: list[int]) -> list[Segment]:
    """Contiguous runs of equal adapter ids as routing segments, each with its rows' longest length.

    Pure; called by `passes.PassRunner` on rows already ordered by adapter.
    """
    out: list[Segment] = []
    start = 0
    for i in range(1, len(adapter_of_row) + 1):
        if i == len(adapter_of_row) or adapter_of_row[i] != adapter_of_row[start]:
            out.append(Segment(adapter_of_row[start], start, i, max(lengths[start:i])))
            start = i
    return out


def plan_passes(works: list[tuple[str, list[int]]], max_tokens: int) -> list[list[int]]:
    """Split works into forward passes of at most `max_tokens` padded tokens (rows x longest row).

    Pure; called by `Engine.forward_backward`. `works` are (adapter id, row lengths) in order;
    the answer lists indices into it. All works of one adapter share a pass, so that an adapter's
    gradient comes from one backward pass, exactly as when it runs alone; an adapter over the
    budget by itself gets a pass of its own.
    """
    by_adapter: dict[str, list[int]] = {}
    for i, (adapter_id, _) in enumerate(works):
        by_adapter.setdefault(adapter_id, []).append(i)
    passes: list[list[int]] = []
    rows = width = 0
    for adapter_id in sorted(by_adapter):
        members = by_adapter[adapter_id]
        lengths = [n for i in members for n in works[i][1]]
        new_rows, new_width = rows + len(lengths), max(width, max(lengths, default=0))
        if passes and new_rows * new_width > max_tokens:
            passes.append([])
            new_rows, new_width = len(lengths), max(lengths, default=0)
        elif not passes:
            passes.append([])
        passes[-1].extend(members)
        rows, width = new_rows, new_width
    return passes
