"""A decode step writes each row's new key and value at that row's own length, and nowhere else.

Rows that joined the batch together share a length; up to a few runs of them are written by
slices, more by one indexed write. Both must place every row's token at its own position.
"""

from __future__ import annotations

import pytest
import torch

from loraplane.runtime import kv_cache


@pytest.mark.parametrize(
    ("lengths", "by_slices"),
    [
        ([3, 3, 3, 3], True),  # one run: every row joined together
        ([4, 4, 3, 3, 3, 5], True),  # three runs: requests that joined at different steps
        ([1, 2, 3, 4, 5, 6], False),  # more runs than slices pay for: one indexed write
    ],
)
def test_a_decode_step_writes_each_rows_token_at_its_own_length(lengths, by_slices):
    store = kv_cache.KvStore(1, 2, 4, torch.float32, torch.device("cpu"), additive_mask=False)
    store.assemble([(None, 0)] * len(lengths))
    store.advance(lengths)
    positions, _ = store.prepare(1)
    assert positions.flatten().tolist() == lengths
    assert (store._runs is not None) == by_slices
    g = torch.Generator().manual_seed(0)
    key, value = torch.randn(len(lengths), 2, 1, 4, generator=g), torch.randn(len(lengths), 2, 1, 4, generator=g)
    store.update(0, key, value)
    for tensor, new in ((store.keys[0], key), (store.values[0], value)):
        expected = torch.zeros_like(tensor)
        for r, n in enumerate(lengths):
            expected[r, :, n] = new[r, :, 0]
        assert torch.equal(tensor, expected)


def test_equal_runs():
    assert kv_cache.equal_runs([]) == []
    assert kv_cache.equal_runs([5]) == [(0, 1, 5)]
    assert kv_cache.equal_runs([2, 2, 3, 3, 3, 2]) == [(0, 2, 2), (2, 5, 3), (5, 6, 2)]


def _grow(store: kv_cache.KvStore, steps: int) -> list[int]:
    """Decode `steps` tokens into every row (key = position); the capacities the store passed through."""
    capacities = [store.capacity]
    for _ in range(steps):
        positions, _ = store.prepare(1)
        key = positions.float()[:, None, :, None].expand(store.rows, 1, 1, 2).contiguous()
        store.update(0, key, key)
        store.advance([1] * store.rows)
        if store.capacity != capacities[-1]:
            capacities.append(store.capacity)
    return capacities


def test_capacity_doubles_up_to_the_rows_limit_so_a_long_generation_copies_its_cache_a_few_times():
    store = kv_cache.KvStore(1, 1, 2, torch.float32, torch.device("cpu"), additive_mask=False)
    store.assemble([(None, 0)] * 3, limit=1000)
    assert _grow(store, 1000) == [64, 128, 256, 512, 1000]
    expected = torch.arange(1000, dtype=torch.float32)
    for tensor in (store.keys[0], store.values[0]):
        assert torch.equal(tensor[:, 0, :, 0], expected.expand(3, 1000))  # every position survived each copy


def test_without_a_limit_capacity_grows_a_step_at_a_time():
    store = kv_cache.KvStore(1, 1, 2, torch.float32, torch.device("cpu"), additive_mask=False)
    store.assemble([(None, 0)])
    assert _grow(store, 200) == [64, 128, 192, 256]


def test_a_rebuild_never_makes_rows_longer_than_their_limit():
    store = kv_cache.KvStore(1, 1, 2, torch.float32, torch.device("cpu"), additive_mask=False)
    store.assemble([(None, 0)] * 2, limit=40)
    assert store.capacity == 40
    _grow(store, 40)
    assert store.capacity == 40


def test_rows_moved_from_a_narrower_store_get_the_new_stores_full_capacity():
    """Prompts are held at their exact length; their decode rows need room for max_tokens more."""
    prompts = kv_cache.KvStore(1, 1, 2, torch.float32, torch.device("cpu"), additive_mask=False)
    prompts.assemble([(None, 0)], limit=3)
    _grow(prompts, 3)
    rows = kv_cache.KvStore(1, 1, 2, torch.float32, torch.device("cpu"), additive_mask=False)
    rows.assemble([(prompts, 0), (prompts, 0)], limit=9)
    assert rows.capacity == 9 and rows.keys[0].shape[2] == 9
    assert _grow(rows, 6) == [9]
    assert torch.equal(rows.keys[0][:, 0, :, 0], torch.arange(9, dtype=torch.float32).expand(2, 9))
