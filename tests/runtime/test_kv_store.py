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


def test_requests_named_by_their_rows_read_their_prompts_once_until_the_rows_change():
    store = kv_cache.KvStore(1, 8, 64, torch.float32, torch.device("cpu"), additive_mask=False)
    store.share_bytes = 1 << 20  # 256 positions of 4 KiB
    store.assemble([(None, 0)] * 8)
    store.advance([300] * 8)
    store.share_prompts([(0, 4, 299), (4, 8, 299)])
    store.prepare(1)
    assert store.decode_chunks == ((0, 8, 301, 4, 299),)
    store.assemble([(store, r) for r in range(6)])  # two rows left: the blocks named are forgotten
    assert store.prompt_blocks == ()
    store.prepare(1)
    assert store.decode_chunks is None
    with pytest.raises(ValueError, match="do not match"):  # more rows than the store holds
        store.share_prompts([(0, 4, 299), (4, 8, 299)])
    with pytest.raises(ValueError, match="do not match"):  # a prompt longer than its rows
        store.share_prompts([(0, 3, 299), (3, 6, 301)])


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
    assert _grow(store, 1000) == [64, 128, 256, 1000]  # from 256 one doubling would reach 1000: go there
    expected = torch.arange(1000, dtype=torch.float32)
    for tensor in (store.keys[0], store.values[0]):
        assert torch.equal(tensor[:, 0, :, 0], expected.expand(3, 1000))  # every position survived each copy


def test_rows_that_would_reach_their_limit_in_one_doubling_get_it_at_once():
    """A 32-token prompt with 64 new tokens gets 96 positions when it starts decoding, not 64 and a
    copy of the whole cache halfway through."""
    store = kv_cache.KvStore(1, 1, 2, torch.float32, torch.device("cpu"), additive_mask=False)
    store.assemble([(None, 0)] * 4, limit=96)
    assert _grow(store, 96) == [96]
    assert kv_cache.next_capacity(33, 0, 96) == 96
    assert kv_cache.next_capacity(33, 0, 129) == 64
    assert kv_cache.next_capacity(100, 0, 0) == 128


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


def test_copy_runs_cover_each_row_once_as_slices_of_repeated_or_consecutive_rows():
    assert kv_cache.copy_runs([], []) == []
    # two requests' prompts, each copied to its four samples
    assert kv_cache.copy_runs(range(8), [0, 0, 0, 0, 1, 1, 1, 1]) == [(0, 4, 0, True), (4, 4, 1, True)]
    # rows kept in order, one left out
    assert kv_cache.copy_runs([0, 1, 2, 3], [5, 6, 7, 9]) == [(0, 3, 5, False), (3, 1, 9, False)]
    # a gap in the new rows starts a new run
    assert kv_cache.copy_runs([0, 2, 3], [1, 1, 1]) == [(0, 1, 1, False), (2, 2, 1, True)]
    assert kv_cache.copy_runs([0, 1, 2], [3, 3, 4]) == [(0, 2, 3, True), (2, 1, 4, False)]


@pytest.mark.parametrize("max_runs", [16, 0])  # by slices, and by one indexed copy
def test_a_rebuild_gives_every_new_row_its_source_rows_positions(monkeypatch, max_runs):
    monkeypatch.setattr(kv_cache, "_MAX_COPY_RUNS", max_runs)
    prompts = kv_cache.KvStore(2, 1, 2, torch.float32, torch.device("cpu"), additive_mask=False)
    prompts.assemble([(None, 0)] * 3, limit=5)
    g = torch.Generator().manual_seed(1)
    for layer in range(2):
        prompts.keys[layer].copy_(torch.randn(prompts.keys[layer].shape, generator=g))
        prompts.values[layer].copy_(torch.randn(prompts.values[layer].shape, generator=g))
    prompts.advance([5, 3, 4])
    rows = kv_cache.KvStore(2, 1, 2, torch.float32, torch.device("cpu"), additive_mask=False)
    plan = [(prompts, 2), (prompts, 2), (None, 0), (prompts, 0), (prompts, 1), (prompts, 1), (prompts, 0)]
    rows.assemble(plan, limit=12)
    assert rows.lengths == [4, 4, 0, 5, 3, 3, 5] and rows.capacity == 12
    for layer in range(2):
        for new, old in ((rows.keys[layer], prompts.keys[layer]), (rows.values[layer], prompts.values[layer])):
            for i, (src, r) in enumerate(plan):
                held = 0 if src is None else src.lengths[r]
                assert torch.equal(new[i, :, :held], old[r, :, :held])
            assert not new[2].any()  # the new empty row


def test_shift_runs_group_consecutive_rows_that_move_by_one_shift():
    assert kv_cache.shift_runs([]) == []
    assert kv_cache.shift_runs([(0, 1), (1, 2), (2, 3)]) == [(0, 1, 3)]  # the first row left
    assert kv_cache.shift_runs([(1, 2), (2, 3), (3, 5), (4, 6), (5, 7)]) == [(1, 2, 2), (3, 5, 3)]
    assert kv_cache.shift_runs([(2, 4), (3, 9)]) == [(2, 4, 1), (3, 9, 1)]
    assert kv_cache.shift_runs([(3, 1), (4, 2), (6, 3)]) == [(3, 1, 2), (6, 3, 1)]  # rows joined before them


def _filled(rows: int, lengths: list[int], capacity: int, geometry: tuple[int, int, int] = (2, 2, 3)
            ) -> kv_cache.KvStore:
    store = kv_cache.KvStore(*geometry, torch.float32, torch.device("cpu"), additive_mask=False)
    store.assemble([(None, 0)] * rows, limit=capacity)
    g = torch.Generator().manual_seed(rows)
    for tensor in store.keys + store.values:
        tensor.copy_(torch.randn(tensor.shape, generator=g))
    store.advance(lengths)
    return store


@pytest.mark.parametrize(
    "keep",
    [
        [1, 2, 3, 4, 5, 6, 7],  # the first row left: every other row moves down by one
        [0, 1, 4, 5, 6, 7],  # two neighbours left
        [0, 2, 3, 5, 7],  # rows left here and there: runs of different shifts
        [0, 1, 2, 3, 4, 5],  # the last rows left: nothing moves
        [4, 5, 6, 7],  # half the rows left, the first half
    ],
)
def test_rows_leaving_are_closed_up_in_the_same_tensors_with_every_kept_rows_positions(keep):
    lengths = [5, 9, 2, 12, 7, 12, 1, 10]
    store = _filled(8, lengths, capacity=12)
    before = [t.clone() for t in store.keys + store.values]
    pointers, held = [t.data_ptr() for t in store.keys + store.values], store.nbytes()
    store.assemble([(store, r) for r in keep], limit=12)
    assert store.lengths == [lengths[r] for r in keep] and store.capacity == 12
    for tensor, old, pointer in zip(store.keys + store.values, before, pointers, strict=True):
        assert tensor.data_ptr() == pointer and tensor.shape[0] == len(keep)  # no new cache
        for i, r in enumerate(keep):
            assert torch.equal(tensor[i, :, : lengths[r]], old[r, :, : lengths[r]])
    assert store.nbytes() == held  # the memory stays with the store until it is rebuilt


@pytest.mark.parametrize(
    "plan",
    [
        # prompts join among the kept rows (rows ordered by adapter): rows behind them move up
        [("p", 0), ("s", 0), ("s", 1), ("p", 1), ("p", 1), ("s", 3), (None, 0), ("s", 4)],
        # one kept row leaves and two samples of a prompt join at the end
        [("s", 1), ("s", 2), ("s", 3), ("s", 4), ("p", 2), ("p", 2)],
        # rows move both ways: down over a row that left, up behind a row that joins
        [("s", 0), ("s", 2), ("s", 3), ("p", 0), ("s", 4)],
        # neighbours move up by growing shifts: the later one must move first
        [("p", 0), ("s", 0), ("p", 1), ("s", 1), ("s", 2), ("s", 3)],
    ],
)
def test_rows_that_join_are_laid_out_in_the_same_tensors_when_they_have_room(plan):
    store = _filled(8, [5, 9, 2, 12, 7, 12, 1, 10], capacity=12)
    store.assemble([(store, r) for r in range(5)], limit=12)  # three rows left: room for three
    prompts = _filled(3, [4, 6, 3], capacity=6)
    before = {"s": [t.clone() for t in store.keys + store.values],
              "p": [t.clone() for t in prompts.keys + prompts.values]}
    lengths = {"s": list(store.lengths), "p": list(prompts.lengths)}
    pointers = [t.data_ptr() for t in store.keys + store.values]
    stores = {"s": store, "p": prompts, None: None}
    store.assemble([(stores[name], r) for name, r in plan], limit=12)
    assert store.lengths == [0 if name is None else lengths[name][r] for name, r in plan]
    for k, tensor in enumerate(store.keys + store.values):
        assert tensor.data_ptr() == pointers[k] and tensor.shape[0] == len(plan)  # no new cache
        for i, (name, r) in enumerate(plan):
            if name is not None:
                n = lengths[name][r]
                assert torch.equal(tensor[i, :, :n], before[name][k][r, :, :n])


def test_more_rows_than_the_store_has_room_for_make_a_new_cache():
    store = _filled(4, [3, 3, 3, 3], capacity=8)
    pointer = store.keys[0].data_ptr()
    store.assemble([(store, r) for r in range(4)] + [(None, 0)], limit=8)
    assert store.keys[0].data_ptr() != pointer and store.rows == 5


def test_once_fewer_than_half_the_rows_are_left_the_store_is_rebuilt_and_gives_its_memory_back():
    store = _filled(8, [4] * 8, capacity=6)
    held = store.nbytes()
    store.assemble([(store, r) for r in (1, 2, 4, 6, 7)], limit=6)  # 5 of 8: closed up in place
    assert store.nbytes() == held
    store.assemble([(store, r) for r in (0, 2, 4)], limit=6)  # 3 of 8 left: a new cache of 3 rows
    assert store.nbytes() == held * 3 // 8 and store.lengths == [4, 4, 4]


def test_a_closed_up_store_decodes_on_and_grows_like_a_rebuilt_one():
    store = _filled(4, [3, 5, 4, 2], capacity=0, geometry=(1, 1, 2))
    store.assemble([(store, 1), (store, 3)])
    rebuilt = kv_cache.KvStore(1, 1, 2, torch.float32, torch.device("cpu"), additive_mask=False)
    rebuilt.assemble([(store, 0), (store, 1)])
    for s in (store, rebuilt):
        _grow(s, 70)  # past the first capacity: the grown cache copies the kept rows only
    assert store.lengths == rebuilt.lengths == [75, 72] and store.capacity == rebuilt.capacity
    for a, b in zip(store.keys, rebuilt.keys, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a[0, :, :75], b[0, :, :75]) and torch.equal(a[1, :, :72], b[1, :, :72])


@pytest.mark.parametrize(
    ("limit", "stay", "changes"),
    [
        (20, 4, 300),  # short rows, many leave: rebuilds in place follow one another
        (0, 24, 500),  # no limit, rows live long: the cache grows past its first capacity
    ],
)
def test_any_sequence_of_joins_leaves_and_steps_keeps_every_rows_keys_and_values(limit, stay, changes):
    """A random walk of decode steps and batch changes, against a plain list of each row's tokens:
    in-place rebuilds that follow one another (leaving stale rows behind, then filling them) and
    growth must hand every row exactly its own positions, as a new cache does. A row stays at a
    change with odds 1 - 1/`stay`."""
    rng = torch.Generator().manual_seed(7)

    def randint(n: int) -> int:
        return int(torch.randint(n, (1,), generator=rng))

    geometry = (1, 2, 3)
    store = kv_cache.KvStore(*geometry, torch.float32, torch.device("cpu"), additive_mask=False)
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []  # each row's keys and values, (heads, n, dim)
    in_place = rebuilt = grown = 0
    for _ in range(changes):
        if rows and randint(3) and (not limit or max(k.shape[1] for k, _ in rows) < limit):  # a decode step
            capacity = store.capacity
            key, value = (torch.randn(len(rows), 2, 1, 3, generator=rng) for _ in range(2))
            store.prepare(1)
            store.update(0, key, value)
            store.advance([1] * len(rows))
            grown += store.capacity > capacity
            rows = [(torch.cat([k, key[i]], 1), torch.cat([v, value[i]], 1)) for i, (k, v) in enumerate(rows)]
        else:  # some rows leave (all that reached the limit), others join anywhere among those kept
            kept = [r for r in range(len(rows)) if (not limit or rows[r][0].shape[1] < limit) and randint(stay)]
            prompts = _filled(3, [randint(6) + 1 for _ in range(3)], capacity=limit, geometry=geometry)
            plan: list[tuple[kv_cache.KvStore | None, int]] = [(store, r) for r in kept]
            new_rows = [rows[r] for r in kept]
            for _ in range(randint(5)):
                at, source = randint(len(plan) + 1), randint(4)
                src, r = (None, 0) if source == 3 else (prompts, source)  # None: a row that joins empty
                plan.insert(at, (src, r))
                n = 0 if src is None else prompts.lengths[r]
                new_rows.insert(at, (prompts.keys[0][r, :, :n].clone(), prompts.values[0][r, :, :n].clone()))
            pointer = store.keys[0].data_ptr() if store.keys else None
            store.assemble(plan, limit=limit)
            in_place += store.keys[0].data_ptr() == pointer
            rebuilt += store.keys[0].data_ptr() != pointer
            rows = new_rows
        assert store.lengths == [k.shape[1] for k, _ in rows] and store.keys[0].shape[0] == len(rows)
        for i, (k, v) in enumerate(rows):
            n = k.shape[1]
            assert torch.equal(store.keys[0][i, :, :n], k) and torch.equal(store.values[0][i, :, :n], v)
    assert in_place >= 10 and rebuilt >= 5 and grown >= (0 if limit else 1)  # every way was taken
