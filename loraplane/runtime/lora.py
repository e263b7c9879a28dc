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

## The arithmetic
`loraplane.runtime.lora_update` holds it: adapters of equal rank, scaling and row layout run as one
group of batched matmuls with a hand-written backward pass (training), and a decode step runs every
adapter's update in two batched matmuls over stacked weights (sampling).

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
import torch.nn.functional as F
from torch import nn

from loraplane.runtime import lora_update
from loraplane.runtime.decode_attention import Piece

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
        #: a decode step's (rows, 1, 1, keys) additive mask: each row sees its own positions only
        self.decode_bias: torch.Tensor | None = None
        #: a decode step's pieces of rows, when its attention cuts them or shares prompts
        self.decode_chunks: tuple[Piece, ...] | None = None

    @contextlib.contextmanager
    def route(
        self,
        segments: list[Segment] | tuple[Segment, ...],
        length_groups: tuple[tuple[int, slice | torch.Tensor], ...] | None = None,
        mask_free: bool = False,
        decode_bias: torch.Tensor | None = None,
        decode_chunks: tuple[Piece, ...] | None = None,
    ) -> Iterator[None]:
        previous = self.segments, self.length_groups, self.mask_free, self.decode_bias, self.decode_chunks
        if not (isinstance(segments, tuple) and all(s.adapter_id is not None and s.end > s.start for s in segments)):
            segments = tuple(s for s in segments if s.adapter_id is not None and s.end > s.start)
        self.segments = segments  # the same tuple across decode steps lets layers reuse their layout
        self.length_groups = length_groups
        self.mask_free = mask_free
        self.decode_bias = decode_bias
        self.decode_chunks = decode_chunks
        try:
            yield
        finally:
            self.segments, self.length_groups, self.mask_free, self.decode_bias, self.decode_chunks = previous


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
        #: the last no-grad layout: (segments, input shape, layout); see `_forward_no_grad`
        self._decode_cache: tuple[Any, ...] | None = None
        #: the decode step's stacked weights, kept while the same adapters decode, and each of
        #: those adapters' share of them (`lora_update.step_weights`), kept while its weights hold
        self._stacked: lora_update.StackedWeights | None = None
        self._pieces: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

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
        self.forget_adapter(adapter_id)

    def remove_adapter(self, adapter_id: str) -> None:
        for name in ADAPTER_TENSORS + ADAPTER_SCALARS:
            getattr(self, name).pop(adapter_id, None)
        self.forget_adapter(adapter_id)

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
        return lora_update.LoraLinearFn.apply(x, self.base_layer, plan, *params)

    def _plan(
        self, segments: list[Segment], x: torch.Tensor
    ) -> tuple[tuple[lora_update.Group, ...], list[torch.Tensor]]:
        plan: list[lora_update.Group] = []
        params: list[torch.Tensor] = []
        for group in lora_update.shape_groups(segments, self.lora_A, self.scaling):
            ids = [seg.adapter_id for seg in group]
            width = lora_update.cut_width(group[0], x)
            plan.append(lora_update.Group(group[0].start, group[-1].end, width, len(ids),
                                          self.scaling[ids[0]]))  # type: ignore[index]
            params.extend(self.lora_A[i] for i in ids)  # type: ignore[index]
            params.extend(self.lora_B[i] for i in ids)  # type: ignore[index]
        return tuple(plan), params

    def _forward_no_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Sampling's path: the same update without the autograd node. The layout is kept while
        the router's segments stay the same object (decode steps) and the input's shape holds;
        the engine drops what it holds of an adapter whose weights change (`forget_adapter`)."""
        routed = self._router.segments
        cached = self._decode_cache
        if cached is None or cached[0] is not routed or cached[1] != x.shape:
            cached = self._decode_cache = (routed, x.shape, self._no_grad_layout(routed, x))
        layout = cached[2]
        if layout is None:
            return self.base_layer(x)
        if isinstance(layout, lora_update.StepUpdate):
            base = self.base_layer
            out = F.linear(x, base.weight, base.bias)
            layout.add_to(x, out)
            return out
        return lora_update.grouped_forward(x, self.base_layer, layout[0], layout[1])[0]

    def _no_grad_layout(self, routed: tuple[Segment, ...], x: torch.Tensor) -> Any:
        """None (no routed rows here), a decode step's `StepUpdate`, or a (plan, stacks) pair."""
        segments = [s for s in routed if s.adapter_id in self.lora_A]
        if not segments:
            return None
        if x.dim() == 3 and x.shape[1] == 1:
            ids = tuple(dict.fromkeys(s.adapter_id for s in segments))
            if self._stacked is None or self._stacked.ids != ids:
                pieces = self._pieces  # kept for the adapters still decoding; copied for those that join
                self._pieces = {i: pieces.get(i) or lora_update.step_weights(
                    self.lora_A[i], self.lora_B[i], self.scaling[i]) for i in ids}  # type: ignore[index]
                self._stacked = lora_update.stack_weights(ids, self._pieces)  # type: ignore[arg-type]
            return lora_update.step_update(segments, self._stacked, x.shape[0])
        plan, params = self._plan(segments, x)
        return plan, lora_update.stack_groups(plan, params)

    def forget_layout(self) -> None:
        """Drop the kept no-grad layout and stacked weights."""
        self._decode_cache = None
        self._stacked = None
        self._pieces = {}

    def forget_adapter(self, adapter_id: str) -> None:
        """Drop what the kept layouts hold of `adapter_id`, whose weights changed, moved or went.

        The decode step's stacked weights stay unless they hold this adapter: an optimizer step or
        a new sampler snapshot of one adapter must not make the layers copy the weights of every
        other adapter in the decode batch again (an adapter's own weights never change while it
        decodes: `scheduling.op_must_wait`).
        """
        if self._stacked is not None and adapter_id in self._stacked.ids:
            self.forget_layout()
        elif self._decode_cache is not None and not isinstance(self._decode_cache[2], lora_update.StepUpdate | None):
            self._decode_cache = None  # a prefill pass's stacks: rebuilt at the next pass anyway


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
