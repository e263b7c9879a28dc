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

    @contextlib.contextmanager
    def route(
        self,
        segments: list[Segment] | tuple[Segment, ...],
        length_groups: tuple[tuple[int, slice | torch.Tensor], ...] | None = None,
    ) -> Iterator[None]:
        previous = self.segments, self.length_groups
        self.segments = tuple(s for s in segments if s.adapter_id is not None and s.end > s.start)
        self.length_groups = length_groups
        try:
            yield
        finally:
            self.segments, self.length_groups = previous


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

    def remove_adapter(self, adapter_id: str) -> None:
        for name in ADAPTER_TENSORS + ADAPTER_SCALARS:
            getattr(self, name).pop(adapter_id, None)

    def has_adapter(self, adapter_id: str) -> bool:
        return adapter_id in self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        segments = [s for s in self._router.segments if s.adapter_id in self.lora_A]
        if not segments:
            return out
        groups = _shape_groups(segments, self.lora_A, self.scaling)
        blocks = _blocks(groups, out.shape[0])
        if len(blocks) == 1:
            return self._updated(x, groups[0], out)
        # One split and one cat: their backward passes are one cat and one split of the output
        # gradient, where in-place slice adds or per-block slices would each copy all of it.
        parts = out.split([end - start for start, end, _ in blocks])
        pieces = [
            part if group is None else self._updated(x, group, part)
            for part, (_, _, group) in zip(parts, blocks, strict=True)
        ]
        return torch.cat(pieces)

    def _updated(self, x: torch.Tensor, group: list[Segment], base: torch.Tensor) -> torch.Tensor:
        """`base` (the base output's rows of the group) plus the scaled low-rank updates of the group.

        The group's adjacent segments share (rows, width, rank), so two batched matmuls serve the
        whole group and the second one adds onto the base output as it goes (`baddbmm`): with many
        adapters of one rank and length in a batch, the autograd graph keeps the same size however
        many adapters there are, and no separate update tensor is built and added. A lone segment
        takes the same path, so that an adapter's numbers do not depend on whether it was grouped.
        """
        k = len(group)
        width = _cut_width(group[0], x)
        start, end = group[0].start, group[-1].end
        # A slice of every row would cost a zero-filled copy of the input gradient in backward.
        rows = x if start == 0 and end == x.shape[0] else x[start:end]
        if width is not None:
            rows, rest, base = rows[:, :width], base[:, width:], base[:, :width]
        shape = base.shape
        ids = [seg.adapter_id for seg in group]
        if k == 1:
            a, b = self.lora_A[ids[0]][None], self.lora_B[ids[0]][None]  # type: ignore[index]
        else:
            a = torch.stack([self.lora_A[i] for i in ids])  # type: ignore[index]
            b = torch.stack([self.lora_B[i] for i in ids])  # type: ignore[index]
        scale = self.scaling[ids[0]]  # type: ignore[index]
        hidden = torch.bmm(rows.to(a.dtype).reshape(k, -1, self.in_features), a.transpose(1, 2))
        if base.dtype == a.dtype:
            summed = torch.baddbmm(
                base.reshape(k, -1, self.out_features), hidden, b.transpose(1, 2), alpha=scale
            )
        else:  # a low-precision base: the update is computed in fp32, then rounded and added
            delta = torch.bmm(hidden, b.transpose(1, 2)) * scale
            summed = base.reshape(k, -1, self.out_features) + delta.to(base.dtype)
        summed = summed.reshape(shape)
        if width is not None:
            summed = torch.cat([summed, rest], dim=1)
        return summed


def _cut_width(seg: Segment, x: torch.Tensor) -> int | None:
    """The width to cut a 3-D input to for this segment, or None to use all of it. Pure."""
    if seg.width is not None and x.dim() == 3 and seg.width < x.shape[1]:
        return seg.width
    return None


def _blocks(groups: list[list[Segment]], batch: int) -> list[tuple[int, int, list[Segment] | None]]:
    """The batch's rows cut into (start, end, group) blocks in order, group None for rows no group covers.

    Pure; called by `MultiLoraLinear.forward` to split the base output once.
    """
    blocks: list[tuple[int, int, list[Segment] | None]] = []
    covered = 0
    for group in groups:
        start, end = group[0].start, group[-1].end
        if start > covered:
            blocks.append((covered, start, None))
        blocks.append((start, end, group))
        covered = end
    if covered < batch:
        blocks.append((covered, batch, None))
    return blocks


def _shape_groups(
    segments: list[Segment], lora_a: dict[str, nn.Parameter], scaling: dict[str, float]
) -> list[list[Segment]]:
    """Runs of adjacent segments with equal row count, width, rank and scaling, batched together.

    Pure; called by `MultiLoraLinear.forward` for the segments of adapters this layer holds. One
    scaling per group lets `MultiLoraLinear._updated` apply it as the `alpha` of its second matmul.
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

    Pure; called by `Engine._run_batch` on rows already ordered by adapter.
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
