"""Samples of one prompt: the decode step reading each request's prompt once versus row by row.

RL asks for many samples of each prompt. A request's samples hold the same keys and values for
its prompt, and consecutive requests of one prompt length and sample count can read each prompt
once per decode step (`loraplane.runtime.decode_attention.shared_runs`) instead of once per
sample. On a random hidden-512 Llama, `--clients` sampling clients of distinct adapters each ask
for S samples of a P-token prompt and 64 new tokens (no stop, so every row runs to the end), for
several (S, P), the last with prompts of different lengths, as RL's usually are (each request then
reads its own prompt once); side by side, best of `--repeats` interleaved runs, the time until every
client has its answer:

  row by row   every row reads its own copy of the prompt (sharing off)
  shared       the runtime's default on the CPU

    python bench/shared_prompts.py --threads 2
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

#: (samples per request, prompt tokens of the first client, of the last) of each line of the table
SHAPES = ((4, 128, 128), (4, 512, 512), (8, 128, 128), (8, 512, 512), (8, 400, 600))
NEW_TOKENS = 64


def requests(clients: int, samples: int, first: int, last: int) -> list[Sample]:
    g = torch.Generator().manual_seed(first)
    lengths = [first + (last - first) * i // max(1, clients - 1) for i in range(clients)]
    return [Sample(f"ad{i}", torch.randint(3, 259, (n,), generator=g).tolist(), samples,
                   SamplingParams(max_tokens=NEW_TOKENS, temperature=1.0, stop=[], seed=i))
            for i, n in enumerate(lengths)]


def all_done(executor: Executor, reqs: list[Sample]) -> float:
    started = time.perf_counter()
    futures = [executor.submit_sample(req)[1] for req in reqs]
    for f in futures:
        f.result()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_option(parser)
    args = parser.parse_args(argv)
    apply_threads(args)
    with h512_executor(args.clients) as executor:
        store = executor.engine.decoder.decode
        default_share = store.share_bytes
        print(f"{args.clients} clients x S samples x (P prompt + {NEW_TOKENS} new tokens); hidden 512, 4 layers, "
              f"cpu fp32, torch threads {torch.get_num_threads()}, best of {args.repeats}, ms until every client is done")
        print(f"{'S':>3} {'P':>7}  {'row by row':>10}  {'shared':>8}  {'row by row / shared':>19}")
        for samples, first, last in SHAPES:
            reqs = requests(args.clients, samples, first, last)
            cases = {"row by row": None, "shared": default_share}
            best = {name: float("inf") for name in cases}
            for repeat in range(args.repeats + 1):  # the first round warms up
                for name, share in cases.items():
                    store.share_bytes = share  # read when the requests' rows join the batch
                    elapsed = all_done(executor, reqs)
                    if repeat:
                        best[name] = min(best[name], elapsed)
            prompts = str(first) if first == last else f"{first}-{last}"
            print(f"{samples:>3} {prompts:>7}  {best['row by row'] * 1000:>10.0f}  {best['shared'] * 1000:>8.0f}  "
                  f"{best['row by row'] / best['shared']:>18.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
