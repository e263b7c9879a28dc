"""A decode step's attention: one query per row over rows of any lengths, cut where lengths differ,
and a request's prompt read once for all its samples.

Callers: `loraplane.runtime.model_host.packed_attention` runs `decode_attention` at every decode
step; `loraplane.runtime.kv_cache.KvStore.prepare` plans its rows with `attention_plan`.

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

## A request's samples read its prompt once
A request's rows (its samples) hold the same keys and values for its prompt: they were copied
from the one row that prefilled it. Read row by row, a request of 8 samples reads its prompt 8
times at every step, and RL asks for many samples of long prompts. So consecutive requests with
one prompt length and one row count (`shared_runs`) can attend in two parts: each request's
queries together over its first row's prompt, then each row over its own positions after the
prompt; the two softmaxes are merged by their log-sum-exps. On the hidden-512 bench model, 8
clients of 8 samples of a 512-token prompt took 44.3 ms a decode step row by row and 24.6 ms
shared. The second call and the merge cost about 0.1 ms a layer there, which reading 3 MiB less
of keys and values about pays back (one request of 4 samples of a 128-token prompt saves 1.5 MiB
a layer and lost 0.2 ms a step; 8 of 4 samples of 64 tokens save 6 MiB and won 0.7 ms), so a run
shares only when it saves `SHARE_BYTES`. The merge is exact arithmetic on the same scores, so the
answers move by rounding only, as a cut's do. Only the CPU's kernel that returns log-sum-exps is
used so far: on other devices every row reads its own prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

#: a cut is made when it saves at least this many bytes of keys and values read per layer: on the
#: CPU an SDPA call costs about as much as reading 1 MiB; on a GPU a kernel launch as much as 32 MiB
SPLIT_BYTES = {"cpu": 1 << 20}
_DEFAULT_SPLIT_BYTES = 32 << 20


#: a run of requests reads each prompt once when that saves more than this many bytes per layer
#: (see the module docstring); devices not named here read every row's prompt
SHARE_BYTES = {"cpu": 4 << 20}


class Piece(NamedTuple):
    """Rows `start ... end` of a decode step, read at `width` positions in one attention call, or
    in two when `share` > 1: blocks of `share` rows (a request's samples) whose first `prompt`
    positions are read once per block."""

    start: int
    end: int
    width: int
    share: int = 1
    prompt: int = 0


def split_bytes(device: torch.device) -> int:
    """The saving a cut must bring on `device` (see `SPLIT_BYTES`). Pure."""
    return SPLIT_BYTES.get(device.type, _DEFAULT_SPLIT_BYTES)


def share_bytes(device: torch.device) -> int | None:
    """The saving a shared prompt must bring on `device`; None: it never shares. Pure."""
    return SHARE_BYTES.get(device.type)


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


def shared_runs(blocks: Sequence[tuple[int, int, int]], penalty: int) -> list[tuple[int, int, int, int]]:
    """The runs of requests that read each prompt once: (start row, end row, rows each, prompt). Pure.

    `blocks` are each request's (start row, end row, prompt length), in row order. Consecutive
    requests with one row count (2 or more) and one prompt length form a run, which shares when
    the positions it saves, (rows - requests) x prompt, outweigh `penalty` positions (its second
    call and the merge). Called when the rows change, like `row_chunks`: the saving does not
    depend on the rows' lengths, so the answer holds while they grow.
    """
    runs: list[tuple[int, int, int, int]] = []
    i = 0
    while i < len(blocks):
        start, end, prompt = blocks[i]
        per = end - start
        j = i + 1
        while j < len(blocks) and blocks[j][2] == prompt and blocks[j][1] - blocks[j][0] == per:
            j += 1
        last = blocks[j - 1][1]
        if per > 1 and prompt > 0 and (last - start - (j - i)) * prompt > penalty:
            runs.append((start, last, per, prompt))
        i = j
    return runs


def attention_plan(lengths: Sequence[int], blocks: Sequence[tuple[int, int, int]], split_penalty: int,
                   share_penalty: int | None) -> tuple[tuple[int, int, int, int], ...]:
    """A decode step's pieces of rows as (start, end, rows each, prompt), `Piece` without its width:
    the runs that share their prompts (`shared_runs`; none when `share_penalty` is None) and, between
    them, the chunks of `row_chunks` (rows each 1, prompt 0). Pure; both penalties in positions."""
    runs = shared_runs(blocks, share_penalty) if share_penalty is not None else []
    pieces: list[tuple[int, int, int, int]] = []
    at = 0
    for start, end, per, prompt in [*runs, (len(lengths), len(lengths), 1, 0)]:
        pieces += [(at + s, at + e, 1, 0) for s, e in row_chunks(lengths[at:start], split_penalty)]
        if end > start:
            pieces.append((start, end, per, prompt))
        at = end
    return tuple(pieces)


def decode_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
    scaling: float | None = None, chunks: tuple[Piece, ...] | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a decode step (one query per row) over rows of any lengths.

    `bias` is the store's additive mask (rows, 1, 1, keys): each row sees its own positions only.
    `chunks`, when given, cut the rows into `Piece`s (see the module docstring); else one SDPA
    call covers them all. The query heads that share a key head are packed as that head's
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
    for start, end, width, share, prompt in chunks:
        keys, values, mask = key[start:end, :, :width], value[start:end, :, :width], bias[start:end, :, :, :width]
        if share > 1:
            _shared_prompt(packed[start:end], keys, values, mask, share, prompt, scaling, out[start:end])
        else:
            part = sdpa(packed[start:end], keys, values, attn_mask=mask, scale=scaling)
            out[start:end] = part.reshape(end - start, 1, heads, value.shape[-1])
    return out, None


def _shared_prompt(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                   share: int, prompt: int, scaling: float | None, out: torch.Tensor) -> None:
    """Attention of rows in blocks of `share` that hold the same first `prompt` positions, into
    `out` (rows, 1, heads, dim); `query` is (rows, kv_heads, queries per key head, dim). The prompt
    is read once per block, from its first row, for all the block's queries together; the
    positions after it row by row."""
    rows, kv_heads, group, _ = query.shape
    blocks = rows // share
    together = query.view(blocks, share, kv_heads, group, -1).transpose(1, 2).reshape(blocks, kv_heads, share * group, -1)
    head, head_lse = _attend(together, key[::share, :, :prompt], value[::share, :, :prompt], None, scaling)
    tail, tail_lse = _attend(query, key[:, :, prompt:], value[:, :, prompt:], bias[..., prompt:], scaling)
    # merged in the rows' layout (block, sample, key head, query), the prompt's part as views: the
    # softmax over both parts is each part's softmax weighted by its share of the exponentials
    by_row = (blocks, share, kv_heads, group)
    weight = (head_lse.view(blocks, kv_heads, share, group).transpose(1, 2) - tail_lse.view(by_row)).sigmoid_()
    torch.lerp(tail.view(*by_row, -1), head.view(blocks, kv_heads, share, group, -1).transpose(1, 2),
               weight.unsqueeze(-1).to(head.dtype), out=out.view(*by_row, -1))


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
            scaling: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's output and the log-sum-exp of each query's scores (the CPU's flash kernel)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, False, attn_mask=mask, scale=scaling)
    return out, lse
