"""A long prompt among short requests: the decode step's attention cut into chunks versus one call.

8 sampling clients of distinct adapters (4 samples each, 32 prompt tokens, 64 new tokens) decode
together on a random hidden-512 Llama; a ninth client sends one request with a `--long`-token
prompt. The decode batch keeps every row's keys padded to the longest row; read in one SDPA call,
every short row is then read at the long row's width. Cut into chunks of their own widths
(`loraplane.runtime.decode_attention`), they are not. Side by side, best of `--repeats`
interleaved runs, the time until the 8 short clients have their answers:

  alone      the 8 short clients, no long prompt
  chunks     with the long prompt, the attention cut (the runtime's default)
  one call   with the long prompt, one call over every row at the longest width

    python bench/mixed_lengths.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.h512 import add_threads_option, apply_threads, h512_executor
from loraplane.runtime.engine import SamplingParams
from loraplane.runtime.executor import Executor, Sample

#: a cut never pays at this saving: the store reads every row in one call
NEVER = 1 << 62


def short_requests() -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    return [Sample(f"ad{i}", torch.randint(3, 259, (32,), generator=g).tolist(), 4,
                   SamplingParams(max_tokens=64, temperature=1.0, stop=[], seed=i)) for i in range(8)]


def long_request(args: argparse.Namespace) -> Sample:
    g = torch.Generator().manual_seed(1)
    return Sample("ad8", torch.randint(3, 259, (args.long,), generator=g).tolist(), 1,
                  SamplingParams(max_tokens=64, temperature=1.0, stop=[], seed=8))


def shorts_done(executor: Executor, shorts: list[Sample], long: Sample | None) -> float:
    """Seconds until every short request has its answer (the long one, if any, then finishes too)."""
    started = time.perf_counter()
    extra = [executor.submit_sample(long)[1]] if long is not None else []
    futures = [executor.submit_sample(req)[1] for req in shorts]
    for f in futures:
        f.result()
    elapsed = time.perf_counter() - started
    for f in extra:
        f.result()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", type=int, default=1900, help="prompt tokens of the long request (default 1900)")
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_option(parser)
    args = parser.parse_args(argv)
    apply_threads(args)
    with h512_executor(9) as executor:
        store = executor.engine.decoder.decode
        default_split = store.split_bytes
        shorts, long = short_requests(), long_request(args)

        def run(with_long: bool, split: int) -> float:
            store.split_bytes = split  # read when the requests' rows join the batch
            return shorts_done(executor, shorts, long if with_long else None)

        cases = [("alone", False, default_split), ("chunks", True, default_split), ("one call", True, NEVER)]
        for _, with_long, split in cases:
            run(with_long, split)  # warm-up
        best = {name: float("inf") for name, _, _ in cases}
        for _ in range(args.repeats):
            for name, with_long, split in cases:
                best[name] = min(best[name], run(with_long, split))
        print(f"8 clients x 4 samples x (32 prompt + 64 new tokens), and one request of {args.long} prompt tokens; "
              f"hidden 512, 4 layers, cpu fp32, torch threads {torch.get_num_threads()}, best of {args.repeats}")
        tokens = 8 * 4 * 64
        for name, _, _ in cases:
            print(f"  {name:<9} short clients done in {best[name] * 1000:7.0f} ms  ({tokens / best[name]:5.0f} tok/s)  "
                  f"{best[name] / best['alone']:5.2f}x alone")
        print(f"one call / chunks: {best['one call'] / best['chunks']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
