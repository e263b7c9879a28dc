"""The cost of rows leaving and joining the decode batch's KV cache: in place versus a new cache.

When a row stops (a stop string, EOS, its max_tokens) the decode store drops it, and when a
request's prompt is in, its rows join. On the CPU the store lays the rows out in the tensors it
has when they have room (`KvStore._rebuild_in_place`); the alternative, the one a GPU store
takes, copies every row into a newly made cache. For a few cache shapes (rows x positions of the
hidden-512 bench model: 4 layers, 8 key/value heads of 64), each row holding half its positions,
this times both ways side by side: the first row leaving (every other row moves), four rows here
and there, the last row (nothing moves), and four rows of one prompt joining in the middle where
four rows left before. Best of 7.

    python bench/kv_rebuilds.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
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


def leaving(keep: Callable[[int], list[int]]) -> Callable[[int, int], float]:
    def run(rows: int, positions: int) -> float:
        store = filled(rows, positions)
        started = time.perf_counter()
        store.assemble([(store, r) for r in keep(rows)], limit=positions)
        return time.perf_counter() - started
    return run


def joining(rows: int, positions: int) -> float:
    store = filled(rows, positions)
    left = [r for r in range(rows) if r % (rows // 4) != 3]
    store.assemble([(store, r) for r in left], limit=positions)
    prompt = filled(1, positions // 2)
    middle = len(left) // 2
    plan = [(store, i) for i in range(middle)] + [(prompt, 0)] * 4 + [(store, i) for i in range(middle, len(left))]
    started = time.perf_counter()
    store.assemble(plan, limit=positions)
    return time.perf_counter() - started


CASES: dict[str, Callable[[int, int], float]] = {
    "first row": leaving(lambda rows: list(range(1, rows))),
    "4 rows": leaving(lambda rows: [r for r in range(rows) if r % (rows // 4) != 3]),
    "last row": leaving(lambda rows: list(range(rows - 1))),
    "4 join": joining,
}


def best_ms(case: Callable[[int, int], float], rows: int, positions: int, in_place: bool, repeats: int) -> float:
    kv_cache._CLOSES_UP = frozenset({"cpu"}) if in_place else frozenset()
    return min(case(rows, positions) for _ in range(repeats)) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    header = f"{'rows':>5} {'positions':>9} {'cache MB':>9} {'change':>10} {'new cache ms':>13} {'in place ms':>12} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for rows, positions in ((32, 96), (64, 96), (32, 1024)):
        mb = 2 * LAYERS * rows * KV_HEADS * positions * HEAD_DIM * 4 / 1e6
        for name, case in CASES.items():
            fresh = best_ms(case, rows, positions, False, args.repeats)
            kept = best_ms(case, rows, positions, True, args.repeats)
            print(f"{rows:>5} {positions:>9} {mb:>9.0f} {name:>10} {fresh:>13.1f} {kept:>12.1f} {fresh / kept:>6.1f}x",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
