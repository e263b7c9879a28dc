"""The KV cache of the decode batch: rows of different lengths in one preallocated tensor per layer.

Callers: `loraplane.runtime.decoding` keeps two stores, one for prompts being prefilled and one for
the rows being decoded, and passes `store.cache` to the model as its `cache`.

## Why not one of transformers' caches
`DynamicCache` holds rows of one common length and appends by concatenation (a copy of the whole
cache at every step); `StaticCache` writes every row at one shared position; `PagedAttentionCache`
is built to be driven by transformers' own continuous-batching manager, which owns its scheduling
thread and knows neither per-row LoRA routing nor training passes between steps. Here each row has
its own length: a forward pass writes row r's new keys and values at positions `lengths[r] ...`
in place (no copy), the model gets each row's `position_ids` and a 4-D mask that lets row r see
its own positions only, and the store plugs into the model through transformers' `Cache` and
`CacheLayerMixin` classes. Shapes only change when rows join or leave (`assemble`) or the capacity
grows (`reserve`), which keeps the per-step work free of host syncs and the layout open to CUDA
graphs and to a paged pool later.

Capacity grows by doubling, never past the longest any row can get (`limit`: for a decoding row its
prompt plus its `max_tokens`, which is what the KV budget charges), so a generation of n tokens
copies its cache about log2(n / 64) times, not n / 64 times; when one more doubling would reach
the limit, it grows to the limit at once (`next_capacity`).

Rows that leave (a row stopped, a prompt moved to the decode batch) and rows that join are laid
out in the tensors the store has, on the CPU, whenever they have room (`assemble`,
`_rebuild_in_place`): the rows behind a row that left move down, those behind a row that joins
move up, by slices and only the positions they hold, and the joining rows are copied in. Making
a new cache instead costs a page fault every 4 KiB and a copy of the whole cache. On the
hidden-512 bench model's cache of 32 rows of 96 positions, where a decode step takes about 14 ms,
four rows leaving took 13.9 ms that way and 3.6 ms in place, four joining 7.2 and 1.6 ms; at 1024
positions, 63 and 22 ms, 84 and 10 ms (`bench/kv_rebuilds.py`). Rows stop one by one when
sampling with stop conditions, and requests join whenever their prompt is in.

The memory of rows that left stays with the store (and in `nbytes`) until it makes a new cache:
when more rows join than it has room for, when the capacity grows, or when fewer than half the
rows it was made for are left, so rows that left never hold more of it than the rows decoding.
On a GPU the caching allocator makes a new cache cheap, and each slice would be a kernel launch,
so there the rows are gathered.

Positions past a row's length hold zeros or stale values; the mask hides them from that row's
queries, and they are overwritten as the row grows. A decode step's attention
(`loraplane.runtime.decode_attention`) runs over all rows with an additive mask in one SDPA call,
or in pieces (`decode_chunks`): chunks of rows whose lengths differ widely, and runs of requests
whose samples read their prompt once (`share_prompts` names each request's rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from loraplane.runtime import decode_attention

#: capacities are multiples of this many positions, except a store capped by its `limit`
_CAPACITY_STEP = 64
#: a decode step writes rows of equal length by slices up to this many runs of them, else by index
_MAX_RUNS = 4
#: on the CPU, `assemble` copies rows by slices up to this many runs of them (`copy_runs`), else
#: by index. An indexed copy gathers the rows into a temporary, whose fresh memory costs a page
#: fault every 4 KiB, and then scatters it; on a GPU that costs little and each slice would be a
#: kernel launch, so there it always copies by index.
_MAX_COPY_RUNS = 16
#: device types whose stores lay rows out in place when rows leave or join (see the module docstring)
_IN_PLACE = frozenset({"cpu"})


class KvStore:
    """Keys and values of `rows` sequences, (rows, kv_heads, capacity, head_dim) per layer."""

    def __init__(
        self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
        additive_mask: bool,
    ) -> None:
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        #: True for attention implementations that add a float mask (eager); False for SDPA's boolean one
        self.additive_mask = additive_mask
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        #: tokens held per row (host ints: the scheduler's view, never read back from the device)
        self.lengths: list[int] = []
        self.capacity = 0
        #: the tensors as made, of which `keys` and `values` are the first `rows` rows: rows that
        #: left in place (`_rebuild_in_place`) keep their memory until the next new cache
        self._made_keys: list[torch.Tensor] = []
        self._made_values: list[torch.Tensor] = []
        #: the longest any row may get (0: unknown); set by `assemble`, caps `reserve`
        self.limit = 0
        self._rows: torch.Tensor | slice = slice(None)
        self._index: torch.Tensor | None = None
        #: (first row, end row, position) of each run of rows that write at one position, or None
        self._runs: list[tuple[int, int, int]] | None = None
        self.mask_free = False
        #: a decode step's (rows, 1, 1, keys) additive mask for `decode_attention`; None otherwise
        self.decode_bias: torch.Tensor | None = None
        #: a decode step's pieces of rows when it cuts them or shares prompts, else None
        self.decode_chunks: tuple[decode_attention.Piece, ...] | None = None
        #: the savings that make a cut, or a shared prompt, worth its extra call, in bytes per
        #: layer (see `decode_attention`); None: prompts are not shared
        self.split_bytes = decode_attention.split_bytes(device)
        self.share_bytes = decode_attention.share_bytes(device)
        #: each request's (start row, end row, prompt length), from `share_prompts`; () unknown
        self.prompt_blocks: tuple[tuple[int, int, int], ...] = ()
        #: the pieces without widths since the rows last changed; None: not worked out yet
        self._bounds: tuple[tuple[int, int, int, int], ...] | None = None
        self._write: torch.Tensor | None = None
        self._width = 0
        self.cache = Cache(layers=[_StoreLayer(self, i) for i in range(num_layers)])

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def _made_rows(self) -> int:
        return self._made_keys[0].shape[0] if self._made_keys else 0

    def nbytes(self) -> int:
        """Bytes the store's tensors hold now, including rows freed in place but not yet released."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in self.keys + self.values}
        return sum(storages.values())

    def prepare(self, width: int, rows: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Set up one forward pass of `width` new tokens per row; returns (position_ids, 4-D mask).

        `rows` selects store rows (in the order the batch holds them); None means every row in
        store order, the decode step's case, which then reads the cache through views.
        """
        lengths = self.lengths if rows is None else [self.lengths[r] for r in rows]
        self.reserve(max(lengths) + width)
        start = torch.tensor(lengths, dtype=torch.long, device=self.device)
        write = start[:, None] + torch.arange(width, device=self.device)[None, :]
        if rows is None:
            self._rows = slice(None)
            self._index = torch.arange(len(lengths), device=self.device)[:, None]
        else:
            self._rows = torch.tensor(list(rows), dtype=torch.long, device=self.device)
            self._index = self._rows[:, None]
        self._write = write
        self._width = max(lengths) + width
        # Rows that joined the batch together hold one length: a few runs of them write by
        # slices, which is cheaper than one indexed write, whose cost is per element.
        runs = equal_runs(lengths) if rows is None else None
        self._runs = runs if runs is not None and len(runs) <= _MAX_RUNS else None
        #: every row starts at the same position: for one new token, or a first chunk, the causal
        #: attention needs no mask
        self.mask_free = len(set(lengths)) == 1 and (width == 1 or lengths[0] == 0)
        allowed = torch.arange(self._width, device=self.device)[None, None, :] <= write[:, :, None]
        decoding = width == 1 and rows is None
        if decoding or self.additive_mask:
            bias = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill_(~allowed, -torch.inf)
        self.decode_bias = bias[:, None] if decoding else None
        self.decode_chunks = self._chunks(lengths) if decoding else None
        mask = bias.clamp(min=torch.finfo(self.dtype).min) if self.additive_mask else allowed
        return write, mask[:, None]

    def share_prompts(self, blocks: Sequence[tuple[int, int, int]]) -> None:
        """Name each request's rows (start, end, prompt length), in row order: rows of one request
        hold the same prompt positions, which a decode step may then read once (`decode_attention`).
        Called after every `assemble` of a decode store, which forgets them."""
        if sum(e - s for s, e, _ in blocks) != self.rows or any(p > min(self.lengths[s:e]) for s, e, p in blocks):
            raise ValueError(f"prompt blocks {list(blocks)} do not match rows of lengths {self.lengths}")
        self.prompt_blocks = tuple(blocks)
        self._bounds = None

    def _chunks(self, lengths: Sequence[int]) -> tuple[decode_attention.Piece, ...] | None:
        """The decode step's pieces of rows with this step's widths; None for one call over all."""
        if self._bounds is None:
            per_position = 2 * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8
            share = None if self.share_bytes is None else max(1, self.share_bytes // per_position)
            self._bounds = decode_attention.attention_plan(
                lengths, self.prompt_blocks, max(1, self.split_bytes // per_position), share)
        if len(self._bounds) < 2 and all(per == 1 for _, _, per, _ in self._bounds):
            return None
        return tuple(decode_attention.Piece(start, end, max(lengths[start:end]) + 1, per, prompt)
                     for start, end, per, prompt in self._bounds)

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's keys and values at each row's positions; return what its queries attend to."""
        assert self._write is not None, "prepare() must run before a forward pass"
        keys, values = self.keys[layer], self.values[layer]
        if self._runs is not None:
            width = key.shape[2]
            for first, end, at in self._runs:
                keys[first:end, :, at: at + width] = key[first:end]
                values[first:end, :, at: at + width] = value[first:end]
        else:
            keys[self._index, :, self._write] = key.transpose(1, 2).to(keys.dtype)
            values[self._index, :, self._write] = value.transpose(1, 2).to(values.dtype)
        if isinstance(self._rows, slice):
            return keys[:, :, : self._width], values[:, :, : self._width]
        return keys[self._rows, :, : self._width], values[self._rows, :, : self._width]

    def advance(self, counts: Sequence[int], rows: Sequence[int] | None = None) -> None:
        """Count the tokens the last pass added: `counts[i]` to row `rows[i]` (or row i)."""
        targets = range(len(self.lengths)) if rows is None else rows
        for r, n in zip(targets, counts, strict=True):
            self.lengths[r] += n
        self._write = None

    def reserve(self, width: int) -> None:
        """Grow every row's capacity to at least `width` positions (a copy, only when it grows); see
        `next_capacity` for how far."""
        if width <= self.capacity:
            return
        capacity = next_capacity(width, self.capacity, self.limit)
        for layer in range(self.num_layers):
            for tensors in (self.keys, self.values):
                grown = self._zeros(self.rows, capacity)
                if self.capacity:
                    grown[:, :, : self.capacity] = tensors[layer]
                tensors[layer] = grown
        self.capacity = capacity
        self._made_keys, self._made_values = list(self.keys), list(self.values)

    def assemble(self, plan: Sequence[tuple[KvStore | None, int]], limit: int = 0) -> None:
        """Rebuild the rows: new row i is row `plan[i][1]` of store `plan[i][0]` (this one or another;
        None: a new empty row). Called when rows join or leave; the only copy of the whole cache
        besides growth. `limit`: the longest any of these rows may get (0: unknown)."""
        lengths = [0 if src is None else src.lengths[r] for src, r in plan]
        capacity = next_capacity(max(lengths + [1]), 0, limit)
        self.limit = limit
        self._bounds = None
        self.prompt_blocks = ()
        own = [(i, r) for i, (src, r) in enumerate(plan) if src is self]
        if (self.device.type in _IN_PLACE and len(plan) <= self._made_rows <= 2 * len(plan)
                and capacity <= self.capacity and all(a[1] < b[1] for a, b in pairwise(own))):
            self._rebuild_in_place(plan, own)  # no new cache (see the module docstring)
            self.lengths = lengths
            return
        copies = self._copies(plan)
        # Every row from one store that is wide enough (rows leaving, or a batch's first rows): one
        # gather per tensor.
        whole = len(copies) == 1 and copies[0][1].numel() == len(plan) and copies[0][0].capacity >= capacity
        for layer in range(self.num_layers):
            if whole:
                src, _, idx, _, _ = copies[0]
                new_keys, new_values = src.keys[layer][idx, :, :capacity], src.values[layer][idx, :, :capacity]
            else:
                new_keys, new_values = self._zeros(len(plan), capacity), self._zeros(len(plan), capacity)
            for src, dst, idx, held, runs in copies if not whole else ():  # the positions the rows hold
                _copy_rows(new_keys, src.keys[layer], dst, idx, held, runs)
                _copy_rows(new_values, src.values[layer], dst, idx, held, runs)
            if layer < len(self.keys):
                self.keys[layer], self.values[layer] = new_keys, new_values
            else:
                self.keys.append(new_keys)
                self.values.append(new_values)
        self.lengths = lengths
        self.capacity = capacity
        self._made_keys, self._made_values = list(self.keys), list(self.values)

    def _rebuild_in_place(self, plan: Sequence[tuple[KvStore | None, int]], own: list[tuple[int, int]]) -> None:
        """`assemble` in the tensors the store has: its own rows (kept in order) move to their new
        rows, those behind rows that left down and those behind rows that join up, by slices of the
        positions they hold; then rows from other stores are copied in. A row that joins empty keeps
        whatever its slot held (the mask hides positions past a row's length). `own`: (new row, old
        row) of this store's rows in the plan."""
        down = shift_runs([(i, r) for i, r in own if i < r])
        up = shift_runs([(i, r) for i, r in own if i > r])
        others = self._copies(plan, skip=self)
        for name in ("keys", "values"):
            for layer, whole in enumerate(getattr(self, "_made_" + name)):
                for dst, src, count in down:  # ascending: a row is read before any row lands on it
                    for at in range(0, count, src - dst):  # no piece longer than the shift: no overlap
                        self._move(whole, dst + at, src + at, min(src - dst, count - at))
                for dst, src, count in reversed(up):  # descending, for the same reason
                    for end in range(count, 0, src - dst):
                        at = max(0, end + src - dst)
                        self._move(whole, dst + at, src + at, end - at)
                for store, dst, idx, held, runs in others:
                    _copy_rows(whole, getattr(store, name)[layer], dst, idx, held, runs)
                getattr(self, name)[layer] = whole[: len(plan)]

    def _copies(self, plan: Sequence[tuple[KvStore | None, int]], skip: KvStore | None = None
                ) -> list[tuple[KvStore, torch.Tensor, torch.Tensor, int, list[tuple[int, int, int, bool]] | None]]:
        """The plan's rows of each store but `skip`, for `_copy_rows`: (store, new rows, its rows,
        the most positions one holds, the runs to copy them by on the CPU or None)."""
        groups: dict[int, tuple[KvStore, list[int], list[int]]] = {}
        for i, (src, r) in enumerate(plan):
            if src is not None and src is not skip and src.capacity:
                groups.setdefault(id(src), (src, [], []))[1].append(i)
                groups[id(src)][2].append(r)
        out = []
        for src, dst, idx in groups.values():
            runs = copy_runs(dst, idx)
            out.append((src, torch.tensor(dst, dtype=torch.long, device=self.device),
                        torch.tensor(idx, dtype=torch.long, device=self.device), max(src.lengths[r] for r in idx),
                        runs if self.device.type == "cpu" and len(runs) <= _MAX_COPY_RUNS else None))
        return out

    def _move(self, whole: torch.Tensor, dst: int, src: int, count: int) -> None:
        """Rows `src ...` of `whole` to rows `dst ...`, the positions they hold (`lengths` before the move)."""
        held = max(self.lengths[src: src + count])
        if held:
            whole[dst: dst + count, :, :held] = whole[src: src + count, :, :held]

    def _zeros(self, rows: int, capacity: int) -> torch.Tensor:
        return torch.zeros(rows, self.kv_heads, capacity, self.head_dim, dtype=self.dtype, device=self.device)


def _copy_rows(new: torch.Tensor, old: torch.Tensor, dst: torch.Tensor, idx: torch.Tensor, held: int,
               runs: list[tuple[int, int, int, bool]] | None) -> None:
    """`new[dst[i], :, :held] = old[idx[i], :, :held]` for every i: by `runs` (see `copy_runs`) when
    given, else by one indexed copy. For `KvStore.assemble`."""
    if runs is None:
        new[dst, :, :held] = old[idx, :, :held]
        return
    for at, count, first, repeat in runs:
        rows = old[first : first + 1].expand(count, -1, -1, -1) if repeat else old[first : first + count]
        new[at : at + count, :, :held] = rows[:, :, :held]


def next_capacity(width: int, capacity: int, limit: int) -> int:
    """The capacity a store holding `capacity` positions per row grows to for `width`. Pure.

    Without a limit: `width` rounded up to a multiple of `_CAPACITY_STEP`. With one: at least twice
    the old capacity, never past the limit (or `width`, if that is longer); and the limit itself
    when one more doubling would reach it, since that growth would copy the whole cache again for
    room the budget already counts (a 96-token generation gets 96 positions at once, not 64 and
    then 96).
    """
    stepped = -(-width // _CAPACITY_STEP) * _CAPACITY_STEP
    if not limit:
        return stepped
    ceiling = max(limit, width)
    grown = min(max(stepped, 2 * capacity), ceiling)
    return ceiling if 2 * grown >= ceiling else grown


def copy_runs(dst: Sequence[int], src: Sequence[int]) -> list[tuple[int, int, int, bool]]:
    """Row `dst[i]` gets row `src[i]`, as runs (first new row, count, first old row, repeat). Pure.

    A run is consecutive new rows that take one old row (`repeat`: a request's samples copying its
    prompt) or consecutive old rows; `assemble` copies each run by slices.
    """
    runs: list[tuple[int, int, int, bool]] = []
    for d, s in zip(dst, src, strict=True):
        if runs and d == runs[-1][0] + runs[-1][1]:
            at, count, first, repeat = runs[-1]
            if s == first and (repeat or count == 1):
                runs[-1] = (at, count + 1, first, True)
                continue
            if s == first + count and not repeat:
                runs[-1] = (at, count + 1, first, False)
                continue
        runs.append((d, 1, s, False))
    return runs


def shift_runs(moves: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Row moves (new row, old row), in increasing order, as runs (first new row, first old row,
    count) of consecutive rows that move by one shift. Pure; for `KvStore.assemble`."""
    runs: list[tuple[int, int, int]] = []
    for i, r in moves:
        if runs and runs[-1][0] + runs[-1][2] == i and runs[-1][1] + runs[-1][2] == r:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((i, r, 1))
    return runs


def equal_runs(lengths: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive equal lengths as (first, end, length). Pure; for `prepare`."""
    runs: list[tuple[int, int, int]] = []
    for i, n in enumerate(lengths):
        if runs and runs[-1][2] == n:
            runs[-1] = (runs[-1][0], i + 1, n)
        else:
            runs.append((i, i + 1, n))
    return runs


class _StoreLayer(CacheLayerMixin):
    """One layer of a `KvStore` as transformers' cache layer interface."""

    def __init__(self, store: KvStore, layer: int) -> None:
        super().__init__()
        self.store, self.layer = store, layer
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.store.update(self.layer, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.store._width, 0

    def get_seq_length(self) -> int:
        return max(self.store.lengths, default=0)

    def get_max_length(self) -> int:
        return -1
