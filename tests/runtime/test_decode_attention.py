"""The decode step's attention cut into chunks of rows where their lengths differ."""

from __future__ import annotations

import torch

from loraplane.runtime.decode_attention import decode_attention, row_chunks, split_bytes


def test_rows_of_one_length_are_one_chunk() -> None:
    assert row_chunks([96] * 32, penalty=256) == ((0, 32),)
    assert row_chunks([], penalty=256) == ()


def test_a_long_request_among_short_ones_gets_a_chunk_of_its_own() -> None:
    lengths = [96] * 16 + [1964] + [96] * 16
    assert row_chunks(lengths, penalty=256) == ((0, 16), (16, 17), (17, 33))
    assert row_chunks([1964] + [96] * 32, penalty=256) == ((0, 1), (1, 33))


def test_lengths_that_differ_by_less_than_a_call_is_worth_stay_together() -> None:
    assert row_chunks([96] * 4 + [100] * 4, penalty=256) == ((0, 8),)
    # the same rows, when a call costs nothing: reading them apart saves 16 positions
    assert row_chunks([96] * 4 + [100] * 4, penalty=0) == ((0, 4), (4, 8))


def test_the_cuts_stay_where_they_are_as_every_row_grows() -> None:
    """The store works the cuts out when rows join or leave, then reuses them at every step."""
    lengths = [40] * 3 + [300] * 2 + [41] * 5 + [700] + [44] * 8 + [60] * 2
    for penalty in (0, 64, 512, 4096):
        cuts = row_chunks(lengths, penalty)
        for grown in (1, 10, 100, 1000):
            assert row_chunks([n + grown for n in lengths], penalty) == cuts


def test_a_cut_must_save_a_mebibyte_on_the_cpu_and_more_on_a_gpu() -> None:
    assert split_bytes(torch.device("cpu")) == 1 << 20
    assert split_bytes(torch.device("cuda")) > split_bytes(torch.device("cpu"))


def test_attention_in_chunks_matches_one_call_over_every_row() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [5] * 3 + [70] + [9] * 4
    rows, heads, kv_heads, dim, width = len(lengths), 4, 2, 16, max(lengths)
    query = torch.randn(rows, heads, 1, dim, generator=g)
    key = torch.randn(rows, kv_heads, width, dim, generator=g)
    value = torch.randn(rows, kv_heads, width, dim, generator=g)
    allowed = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    bias = torch.zeros(rows, width).masked_fill_(~allowed, -torch.inf)[:, None, None]
    whole, _ = decode_attention(torch.nn.Module(), query, key, value, bias)
    cuts = row_chunks(lengths, penalty=0)
    assert len(cuts) == 3
    chunks = tuple((s, e, max(lengths[s:e])) for s, e in cuts)
    parts, _ = decode_attention(torch.nn.Module(), query, key, value, bias, chunks=chunks)
    assert parts.shape == whole.shape == (rows, 1, heads, dim)
    # the kernel's blocking follows the width read: rounding moves, by about 1e-7
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    # each chunk equals its rows attended alone, at their own width
    for s, e, w in chunks:
        alone, _ = decode_attention(torch.nn.Module(), query[s:e], key[s:e, :, :w], value[s:e, :, :w],
                                    bias[s:e, :, :, :w])
        assert torch.equal(parts[s:e], alone)
