"""The decode step's attention cut into chunks of rows where their lengths differ."""

from __future__ import annotations

import pytest
import torch

from loraplane.runtime.decode_attention import (
    Piece,
    attention_plan,
    decode_attention,
    row_chunks,
    shared_runs,
    split_bytes,
)


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
    chunks = tuple(Piece(s, e, max(lengths[s:e])) for s, e in cuts)
    parts, _ = decode_attention(torch.nn.Module(), query, key, value, bias, chunks=chunks)
    assert parts.shape == whole.shape == (rows, 1, heads, dim)
    # the kernel's blocking follows the width read: rounding moves, by about 1e-7
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    # each chunk equals its rows attended alone, at their own width
    for s, e, w, _, _ in chunks:
        alone, _ = decode_attention(torch.nn.Module(), query[s:e], key[s:e, :, :w], value[s:e, :, :w],
                                    bias[s:e, :, :, :w])
        assert torch.equal(parts[s:e], alone)


def test_requests_of_one_prompt_length_and_row_count_read_their_prompts_once() -> None:
    blocks = [(4 * i, 4 * i + 4, 32) for i in range(8)]  # 8 requests of 4 samples, 32-token prompts
    assert shared_runs(blocks, penalty=256) == [(0, 32, 4, 32)]
    # one request alone saves 3 x 32 positions: not worth a second call at this penalty
    assert shared_runs(blocks[:1], penalty=256) == []
    assert shared_runs(blocks[:1], penalty=64) == [(0, 4, 4, 32)]


def test_a_run_breaks_where_the_prompt_length_or_the_row_count_changes() -> None:
    blocks = [(0, 4, 600), (4, 8, 600), (8, 11, 600), (11, 14, 600), (14, 15, 900), (15, 18, 20)]
    assert shared_runs(blocks, penalty=256) == [(0, 8, 4, 600), (8, 14, 3, 600)]
    assert shared_runs(blocks, penalty=0) == [(0, 8, 4, 600), (8, 14, 3, 600), (15, 18, 3, 20)]


def test_rows_between_shared_runs_are_cut_by_their_lengths() -> None:
    lengths = [640] * 8 + [40] * 2 + [1964] + [640] * 6
    blocks = [(0, 4, 600), (4, 8, 600), (8, 9, 30), (9, 10, 30), (10, 11, 1900), (11, 14, 600), (14, 17, 600)]
    plan = attention_plan(lengths, blocks, split_penalty=256, share_penalty=256)
    assert plan == ((0, 8, 4, 600), (8, 10, 1, 0), (10, 11, 1, 0), (11, 17, 3, 600))
    # devices that do not share: the cuts alone
    assert attention_plan(lengths, blocks, 256, None) == tuple((s, e, 1, 0) for s, e in row_chunks(lengths, 256))
    # the plan holds as every row grows
    assert attention_plan([n + 100 for n in lengths], blocks, 256, 256) == plan


def _prompt_shared_rows(lengths: list[int], blocks: list[tuple[int, int, int]], kv_heads: int, dim: int,
                        g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of rows whose blocks hold one prompt, as a request's samples do."""
    rows, width = len(lengths), max(lengths)
    key = torch.randn(rows, kv_heads, width, dim, generator=g)
    value = torch.randn(rows, kv_heads, width, dim, generator=g)
    for start, end, prompt in blocks:
        key[start:end, :, :prompt] = key[start, :, :prompt].clone()
        value[start:end, :, :prompt] = value[start, :, :prompt].clone()
    return key, value


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (4, 4), (8, 1)])
def test_attention_over_shared_prompts_matches_one_call_over_every_row(heads: int, kv_heads: int) -> None:
    g = torch.Generator().manual_seed(1)
    # two runs of requests (3 samples of a 40-token prompt; 2 of a 7-token one) at different
    # lengths within each run, and a request of one row between them
    blocks = [(0, 3, 40), (3, 6, 40), (6, 7, 12), (7, 9, 7), (9, 11, 7)]
    lengths = [52] * 3 + [45] * 3 + [20] + [9] * 2 + [30] * 2
    rows, dim = len(lengths), 16
    query = torch.randn(rows, heads, 1, dim, generator=g)
    key, value = _prompt_shared_rows(lengths, blocks, kv_heads, dim, g)
    allowed = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    bias = torch.zeros(rows, max(lengths)).masked_fill_(~allowed, -torch.inf)[:, None, None]
    whole, _ = decode_attention(torch.nn.Module(), query, key, value, bias)
    plan = attention_plan(lengths, blocks, split_penalty=1 << 20, share_penalty=0)
    assert [p[2:] for p in plan] == [(3, 40), (1, 0), (2, 7)]
    pieces = tuple(Piece(s, e, max(lengths[s:e]), per, prompt) for s, e, per, prompt in plan)
    shared, _ = decode_attention(torch.nn.Module(), query, key, value, bias, chunks=pieces)
    assert shared.shape == whole.shape == (rows, 1, heads, dim)
    torch.testing.assert_close(shared, whole, rtol=0, atol=1e-6)
