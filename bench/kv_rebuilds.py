"""The cost of rows leaving and joining the decode batch's KV cache: in place versus a new cache.

When a row stops (a stop string, EOS, its max_tokens) the decode store drops it, and when a
request's prompt is in, its rows join. On the CPU the store lays the rows out in the tensors it
has when they have room (`KvStore._rebuild_in_place`); the alternative, the one a GPU store
takes, copies every row into a newly made cache. For a few cache shapes (rows x positions of the
hidden-512 bench model: 4 layers, 8 key/value heads of 64), each row holding half its positions,
this times both ways side by side: the first row leaving (every other row moves), four rows here
and there, the last row (nothing moves), and four rows of one prompt joining in the middle where
four rows left before. Best of 7.

Then the same both ways end to end: 8 clients of distinct adapters decoding together on a random
hidden-512 Llama, 4 samples each, 32 prompt tokens, up to `--new` tokens, with four stop token
ids, so that rows stop one by one (each run decodes the same tokens: requests are seeded).

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

from bench.h512 import HEAD_DIM, KV_HEADS, LAYERS, add_threads_option, apply_threads, h512_engine
from loraplane.runtime import kv_cache
from loraplane.runtime.engine import LoraSpec, SamplingParams


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
    kv_cache._IN_PLACE = frozenset({"cpu"}) if in_place else frozenset()
    return min(case(rows, positions) for _ in range(repeats)) * 1000


def decode_with_stops(new: int, repeats: int) -> None:
    engine = h512_engine()
    g = torch.Generator().manual_seed(0)
    jobs = []
    for i in range(8):
        engine.create_adapter(f"ad{i}", LoraSpec(rank=16, alpha=32.0, seed=i))
        params = SamplingParams(max_tokens=new, temperature=1.0, stop=[10, 11, 12, 13], seed=i)
        jobs.append((f"ad{i}", torch.randint(3, 259, (32,), generator=g).tolist(), params))

    def run() -> tuple[float, int]:
        decoder = engine.new_decoder()
        for adapter, prompt, params in jobs:
            engine.ensure_resident(adapter)
            decoder.add(engine.prepare_sample(adapter, prompt, 4, params))
        tokens = 0
        started = time.perf_counter()
        with torch.no_grad():
            while not decoder.idle:
                tokens += decoder.step().new_tokens
        return time.perf_counter() - started, tokens

    best: dict[bool, float] = {}
    counts: dict[bool, int] = {}
    for _ in range(repeats):
        for in_place in (False, True):
            kv_cache._IN_PLACE = frozenset({"cpu"}) if in_place else frozenset()
            seconds, counts[in_place] = run()
            best[in_place] = min(seconds, best.get(in_place, seconds))
    print(f"\n8 clients x 4 samples, 32 prompt + up to {new} tokens, 4 stop ids ({counts[True]} tokens decoded, "
          f"{counts[False]} with a new cache), best of {repeats}: new cache {best[False] * 1000:.0f} ms, "
          f"in place {best[True] * 1000:.0f} ms ({best[False] / best[True]:.2f}x)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_threads_option(parser)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new", type=int, default=64, help="max_tokens of the end-to-end runs")
    args = parser.parse_args(argv)
    apply_threads(args)
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
    decode_with_stops(args.new, max(3, args.repeats // 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
