"""A decode step's attention: one query per row over rows of any lengths, cut where lengths differ.

Callers: `loraplane.runtime.model_host.packed_attention` runs `decode_attention` at every decode
step; `loraplane.runtime.kv_cache.KvStore.prepare` cuts its rows with `row_chunks`.

## Why cut
The decode batch keeps every row's keys in one tensor per layer, padded to the longest row, and a
row's mask hides the positions past its own length. One SDPA call over every row at the longest
width costs rows x longest, whatever the rows hold: a single request with a 1900-token prompt
among 32 rows of 96 made every step of the hidden-512 bench model 7 times slower (10 to 69 ms).
So the rows are cut into contiguous chunks, each with its own width (its longest row), and SDPA
runs once per chunk, on views. A cut costs one more call per layer; `row_chunks` cuts only where
the positions it saves are worth more than that call (`split_bytes`).

## Same answers, cut or not
Within a chunk a row sees exactly its own positions (the mask), and the positions past them add
nothing to its softmax (their weights are exactly 0). What the width read does change is the
kernel's blocking, and with it the rounding: by about 1e-7, as between a row decoded alone and
the same row in a batch, well inside the 1e-5 that batching is held to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: a cut is made when it saves at least this many bytes of keys and values read per layer: on the
#: CPU an SDPA call costs about as much as reading 1 MiB; on a GPU a kernel launch as much as 32 MiB
SPLIT_BYTES = {"cpu": 1 << 20}
_DEFAULT_SPLIT_BYTES = 32 << 20


def split_bytes(device: torch.device) -> int:
    """The saving a cut must bring on `device` (see `SPLIT_BYTES`). Pure."""
    return SPLIT_BYTES.get(device.type, _DEFAULT_SPLIT_BYTES)


def row_chunks(lengths: Sequence[int], penalty: int) -> tuple[tuple[int, int], ...]:
    """The rows cut into contiguous chunks (start, end), each read at its longest row's width. Pure.

    From the first row on, each run of rows of one length (a request's rows hold one length)
    joins the chunk before it unless reading the two apart, plus `penalty` positions for the
    extra call, reads fewer positions than reading them together. Called when the rows change,
    not at every step: every row grows by one position per step, which adds the same to both
    sides of that comparison and so leaves the cuts where they were.
    """
    chunks: list[list[int]] = []  # [start, end, longest length]
    i = 0
    while i < len(lengths):
        end = i + 1
        while end < len(lengths) and lengths[end] == lengths[i]:
            end += 1
        n = lengths[i]
        if chunks:
            first, last, longest = chunks[-1]
            together = (end - first) * max(longest, n)
            apart = (last - first) * longest + (end - i) * n + penalty
            if together <= apart:
                chunks[-1] = [first, end, max(longest, n)]
                i = end
                continue
        chunks.append([i, end, n])
        i = end
    return tuple((first, last) for first, last, _ in chunks)


def decode_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
    scaling: float | None = None, chunks: tuple[tuple[int, int, int], ...] | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a decode step (one query per row) over rows of any lengths.

    `bias` is the store's additive mask (rows, 1, 1, keys): each row sees its own positions only.
    `chunks` (start, end, width), when given, cut the rows (see the module docstring); else one
    SDPA call covers them all. The query heads that share a key head are packed as that head's
    queries (no copies of the keys).
    """
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    packed = query.view(rows, kv_heads, heads // kv_heads, dim)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if chunks is None:
        out = sdpa(packed, key, value, attn_mask=bias, scale=scaling)
        return out.reshape(rows, 1, heads, value.shape[-1]), None
    out = query.new_empty(rows, 1, heads, value.shape[-1])
    for start, end, width in chunks:
        part = sdpa(packed[start:end], key[start:end, :, :width], value[start:end, :, :width],
                    attn_mask=bias[start:end, :, :, :width], scale=scaling)
        out[start:end] = part.reshape(end - start, 1, heads, value.shape[-1])
    return out, None
