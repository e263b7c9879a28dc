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
