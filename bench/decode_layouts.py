"""A decode step whose adapters hold different row counts: LoRA updates as views versus a padded gather.

Rows per adapter differ whenever one request asks for more samples than the others, or rows
stop early (a stop string, EOS). A decode step's LoRA update (`loraplane.runtime.lora_update`)
runs adapters of equal row counts laid end to end as views of the batch, in up to two runs; more
varied counts are gathered into a padded batch. On a random hidden-512 Llama, 8 adapters, 32
prompt tokens, this times one decode step (best of `--repeats`, after the batch is full) for
three batches, each with the two runs as views (the runtime's default) and forced through the
padded gather, side by side:

  even     8 requests of 4 samples (one run: the same either way)
  7+1      7 requests of 4 samples and one of 5 (two runs)
  varied   8 requests of 4, 3, 4, 4, 2, 4, 4 and 1 samples (the padded gather either way)

    python bench/decode_layouts.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.h512 import add_threads_option, apply_threads, h512_engine
from loraplane.runtime import lora_update
from loraplane.runtime.engine import Engine, LoraSpec, SamplingParams

BATCHES = {"even": [4] * 8, "7+1": [4] * 7 + [5], "varied": [4, 3, 4, 4, 2, 4, 4, 1]}


def step_ms(engine: Engine, samples: list[int], steps: int) -> float:
    """Milliseconds of one decode step of a batch of these requests, once every row decodes."""
    g = torch.Generator().manual_seed(0)
    decoder = engine.new_decoder()
    for i, n in enumerate(samples):
        params = SamplingParams(max_tokens=steps + 8, temperature=1.0, stop=[], seed=i)
        decoder.add(engine.prepare_sample(f"ad{i}", torch.randint(3, 259, (32,), generator=g).tolist(), n, params))
    with torch.no_grad():
        while decoder.decode_rows < sum(samples):
            decoder.step()
        decoder.step()
        started = time.perf_counter()
        for _ in range(steps):
            decoder.step()
        return (time.perf_counter() - started) / steps * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="decode steps timed per run")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    apply_threads(args)
    engine = h512_engine()
    for i in range(8):
        engine.create_adapter(f"ad{i}", LoraSpec(rank=16, alpha=32.0, seed=i))
    default_runs = lora_update._MAX_SLICE_RUNS
    ways = {"views": default_runs, "gather": 1}
    best = {(batch, way): float("inf") for batch in BATCHES for way in ways}
    try:
        for round_ in range(args.repeats + 1):  # round 0 warms up and is not counted
            for batch, samples in BATCHES.items():
                for way, runs in ways.items():
                    lora_update._MAX_SLICE_RUNS = runs  # read when a layer lays out a new batch
                    ms = step_ms(engine, samples, args.steps)
                    if round_:
                        best[batch, way] = min(best[batch, way], ms)
    finally:
        lora_update._MAX_SLICE_RUNS = default_runs
    print(f"hidden 512, 4 layers, 8 adapters of rank 16, cpu fp32, torch threads {torch.get_num_threads()}, "
          f"decode step ms, best of {args.repeats}")
    print(f"{'batch':<8} {'rows':>4} {'views':>7} {'gather':>7} {'gather/views':>13} {'views/even':>11}")
    for batch, samples in BATCHES.items():
        views, gather = best[batch, "views"], best[batch, "gather"]
        print(f"{batch:<8} {sum(samples):>4} {views:>7.2f} {gather:>7.2f} {gather / views:>12.2f}x "
              f"{views / best['even', 'views']:>10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
