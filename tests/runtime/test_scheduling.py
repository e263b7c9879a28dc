"""The sampling policy of the model thread, as tables: KV charges, admission, prefill chunks, holds."""

from __future__ import annotations

import pytest

from loraplane.runtime import scheduling
from loraplane.runtime.scheduling import KvNeed


def need(rows: int, final_len: int, decode_rows: int | None = None) -> KvNeed:
    return KvNeed(rows=rows, final_len=final_len, decode_rows=rows if decode_rows is None else decode_rows)


def test_bytes_per_token_counts_keys_and_values_of_every_layer():
    assert scheduling.kv_bytes_per_token(num_layers=4, kv_heads=2, head_dim=16, element_size=4) == 2 * 4 * 2 * 16 * 4


@pytest.mark.parametrize(
    ("prompt", "samples", "max_tokens", "prefilling", "expected"),
    [
        (10, 4, 20, True, KvNeed(rows=5, final_len=30, decode_rows=4)),
        (10, 4, 20, False, KvNeed(rows=4, final_len=30, decode_rows=4)),
        (10, 1, 0, True, KvNeed(rows=2, final_len=11, decode_rows=1)),  # max_tokens 0 still holds the prompt
    ],
)
def test_request_need(prompt, samples, max_tokens, prefilling, expected):
    assert scheduling.request_need(prompt, samples, max_tokens, prefilling) == expected


def test_bound_is_all_rows_at_the_longest_length():
    assert scheduling.kv_bound([need(2, 10), need(3, 50)], bytes_per_token=8) == 5 * 50 * 8
    assert scheduling.kv_bound([], bytes_per_token=8) == 0


@pytest.mark.parametrize(
    ("active", "waiting", "budget", "max_rows", "admitted"),
    [
        ([], [need(2, 10), need(2, 10)], 40, 8, 2),                  # both fit: 4 rows x 10
        ([], [need(2, 10), need(2, 10)], 39, 8, 1),                  # the second would pass the budget
        ([need(2, 10)], [need(2, 100)], 399, 8, 0),                  # a long one widens every row: 4 x 100
        ([], [need(9, 10)], 1, 8, 1),                                # alone, it runs (refused at submit if too big)
        ([need(4, 10)], [need(4, 10), need(1, 10)], 10**6, 6, 0),     # rows limit; the small one does not overtake
        ([need(4, 10)], [need(2, 10), need(1, 10)], 10**6, 6, 1),
    ],
)
def test_admission_in_arrival_order_within_budget_and_rows(active, waiting, budget, max_rows, admitted):
    assert scheduling.admit_count(active, waiting, 1, budget, max_rows) == admitted


def test_oversize_reason_names_the_limit():
    assert scheduling.oversize_reason(need(3, 10, 2), 4, 120, 8) is None
    assert "kv_cache_bytes" in scheduling.oversize_reason(need(3, 10, 2), 4, 119, 8)
    assert "max_decode_rows" in scheduling.oversize_reason(need(10, 10, 9), 1, 10**9, 8)


@pytest.mark.parametrize(
    ("remaining", "chunk", "expected"),
    [
        ([32, 32, 32], 100, [32, 32, 32]),  # 3 x 32 padded tokens fit
        ([32, 32, 32, 32], 100, [32, 32, 32, 0]),
        ([1000, 5], 256, [256, 0]),  # a long prompt advances alone by one chunk
        ([5, 1000], 256, [5, 5]),  # the width is the first one's chunk
        ([0, 7], 10, [0, 7]),
        ([], 10, []),
    ],
)
def test_prefill_chunks_bound_the_padded_pass(remaining, chunk, expected):
    assert scheduling.prefill_chunks(remaining, chunk) == expected


@pytest.mark.parametrize(
    ("kind", "adapter", "decoding", "waits"),
    [
        ("optim_step", "a", {"a"}, True),
        ("load_state", "a", {"a"}, True),
        ("optim_step", "b", {"a"}, False),
        ("save_state", "a", {"a"}, False),
        ("forward_backward", "a", {"a"}, False),
    ],
)
def test_only_weight_changing_ops_of_a_decoding_adapter_wait(kind, adapter, decoding, waits):
    assert scheduling.op_must_wait(kind, adapter, decoding) is waits
