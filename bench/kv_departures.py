"""The cost of rows leaving the decode batch's KV cache: closed up in place versus a new cache.

When a row stops (a stop string, EOS, its max_tokens) the decode store drops it. On the CPU the
rows behind it move down in the same tensors (`KvStore._close_up`); the alternative, the one a
GPU store takes, gathers the kept rows into a newly made cache. For a few cache shapes (rows x
positions of the hidden-512 bench model: 4 layers, 8 key/value heads of 64), each row holding
half its positions, this times both ways side by side for three departures: the first row (every
other row moves), four rows here and there, and the last row (nothing moves). Best of 7.

    python bench/kv_departures.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraplane.runtime import kv_cache

LAYERS, KV_HEADS, HEAD_DIM = 4, 8, 64


def filled(rows: int, positions: int) -> kv_cache.KvStore:
    store = kv_cache.KvStore(LAYERS, KV_HEADS, HEAD_DIM, torch.float32, torch.device("cpu"), additive_mask=False)
    store.assemble([(None, 0)] * rows, limit=positions)
    store.reserve(positions)
    for tensor in store.keys + store.values:
        tensor.normal_()
    store.advance([positions // 2] * rows)
    return store


def departure_ms(rows: int, positions: int, keep: list[int], in_place: bool, repeats: int) -> float:
    kv_cache._CLOSES_UP = frozenset({"cpu"}) if in_place else frozenset()
    best = float("inf")
    for _ in range(repeats):
        store = filled(rows, positions)
        started = time.perf_counter()
        store.assemble([(store, r) for r in keep], limit=positions)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    header = f"{'rows':>5} {'positions':>9} {'cache MB':>9} {'leaving':>12} {'new cache ms':>13} {'in place ms':>12} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for rows, positions in ((32, 96), (64, 96), (32, 1024)):
        mb = 2 * LAYERS * rows * KV_HEADS * positions * HEAD_DIM * 4 / 1e6
        for name, keep in (("first row", list(range(1, rows))),
                           ("4 rows", [r for r in range(rows) if r % (rows // 4) != 3]),
                           ("last row", list(range(rows - 1)))):
            fresh = departure_ms(rows, positions, keep, False, args.repeats)
            closed = departure_ms(rows, positions, keep, True, args.repeats)
            print(f"{rows:>5} {positions:>9} {mb:>9.0f} {name:>12} {fresh:>13.1f} {closed:>12.1f} {fresh / closed:>6.1f}x",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
