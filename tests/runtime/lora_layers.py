"""One small multi-adapter LoRA layer with four adapters of mixed ranks and scalings, for the table
tests of the LoRA update (training's grouped matmuls and the decode step's batched one)."""

from __future__ import annotations

import torch
from torch import nn

from loraplane.runtime import lora

#: adapter id -> (rank, alpha)
ADAPTERS = {"a": (2, 4.0), "b": (2, 4.0), "c": (3, 3.0), "d": (2, 8.0)}


def build_layer(frozen: tuple[str, ...] = (), dtype: torch.dtype = torch.float32
                ) -> tuple[lora.MultiLoraLinear, lora.LoraRouter]:
    """A 12 -> 10 linear with `ADAPTERS`, B not zero (so each adapter changes the output); the
    adapters in `frozen` take no gradient."""
    torch.manual_seed(0)
    base = nn.Linear(12, 10, bias=True).to(dtype).requires_grad_(False)
    router = lora.LoraRouter()
    layer = lora.MultiLoraLinear(base, router)
    generator = torch.Generator().manual_seed(1)
    for adapter_id, (rank, alpha) in ADAPTERS.items():
        layer.add_adapter(adapter_id, rank, alpha, generator)
        with torch.no_grad():
            layer.lora_B[adapter_id].normal_(generator=generator)
        layer.lora_A[adapter_id].requires_grad_(adapter_id not in frozen)
        layer.lora_B[adapter_id].requires_grad_(adapter_id not in frozen)
    return layer, router
