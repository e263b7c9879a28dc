"""Sampling while another adapter trains: 8 clients' tokens/s alone and beside a training loop.

RL on a shared runtime interleaves tenants: while some adapters sample, others run forward_backward,
optim_step and save_weights_for_sampler. Each optimizer step and each new sampler snapshot changes
one adapter's weights. The decode batch keeps its adapters' LoRA weights stacked per layer, and
those stay in place unless the adapter that changed is one of them
(`MultiLoraLinear.forget_adapter`). This bench prints, in one run, interleaved, on the hidden-512
bench model, the tokens/s of 8 clients of 8 adapters (4 samples x 32 prompt + 128 new tokens each):

  alone        nothing else runs
  training     a ninth adapter trains (4 x 64 tokens, optim_step) and snapshots, in a loop
  restacking   the same, but every weight change restacks every adapter's weights, as an engine
               that forgot all its kept layouts at each change would

The training / alone ratio is the turn's policy (`loraplane.runtime.turns`): a turn runs one
training pass, then one decode step, so that a training step waits for at most one decode step;
a trainer that always has a pass ready holds the samplers to one step per pass. The training /
restacking ratio is what keeping the stacked weights saves.

    python bench/sampling_while_training.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.h512 import add_threads_option, apply_threads, h512_executor
from loraplane.runtime import lora
from loraplane.runtime.engine import AdamParams, Datum, FwdBwdWork, LoraSpec, SamplingParams
from loraplane.runtime.executor import Executor, OptimStep, Sample

CLIENTS, SAMPLES, PROMPT, NEW = 8, 4, 32, 128


def sample_all(executor: Executor) -> float:
    """Tokens/s of the 8 clients' requests, submitted at once, until the last one is done."""
    reqs = [Sample(f"ad{i}", list(range(3 + i, 3 + i + PROMPT)), SAMPLES,
                   SamplingParams(max_tokens=NEW, temperature=1.0, stop=[], seed=i)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for future in [executor.submit_sample(req)[1] for req in reqs]:
        future.result()
    return CLIENTS * SAMPLES * NEW / (time.perf_counter() - started)


def train_until(executor: Executor, stop: threading.Event, seq: list[int]) -> None:
    """The trainee's loop: forward_backward, optim_step, then a sampler snapshot (keeping 4)."""
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(4):
        ids = torch.randint(3, 259, (65,), generator=g)
        data.append(Datum(ids[:-1], {"target_tokens": ids[1:]}))
    while not stop.is_set():
        executor.submit("trainee", seq[0], FwdBwdWork("trainee", data))
        executor.submit("trainee", seq[0] + 1, OptimStep("trainee", AdamParams(learning_rate=1e-4)))[1].result()
        name = f"trainee-{seq[0] % 10}"
        executor.call(lambda engine, n=name: engine.snapshot("trainee", n, keep=4), "snapshot").result()
        seq[0] += 2


def beside_training(executor: Executor, seq: list[int]) -> float:
    stop = threading.Event()
    trainer = threading.Thread(target=train_until, args=(executor, stop, seq), daemon=True)
    trainer.start()
    try:
        return sample_all(executor)
    finally:
        stop.set()
        trainer.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_option(parser)
    args = parser.parse_args(argv)
    apply_threads(args)
    kept = lora.MultiLoraLinear.forget_adapter
    with h512_executor(CLIENTS, room=6) as executor:  # the trainee and its snapshots
        executor.create_adapter("trainee", LoraSpec(rank=16, alpha=32.0, seed=99)).result()
        seq = [1]
        columns = {"alone": [], "training": [], "restacking": []}
        sample_all(executor)
        for _ in range(args.repeats):
            columns["alone"].append(sample_all(executor))
            columns["training"].append(beside_training(executor, seq))
            lora.MultiLoraLinear.forget_adapter = lambda layer, _adapter_id: layer.forget_layout()
            try:
                columns["restacking"].append(beside_training(executor, seq))
            finally:
                lora.MultiLoraLinear.forget_adapter = kept
    best = {name: max(values) for name, values in columns.items()}
    print(f"{CLIENTS} clients x {SAMPLES} samples x ({PROMPT} prompt + {NEW} new tokens); hidden 512, 4 layers, cpu fp32, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeats}, sampling tokens/s")
    print(f"{'alone':>8} {'training':>9} {'restacking':>11} {'training / alone':>17} {'training / restacking':>22}")
    print(f"{best['alone']:>8.0f} {best['training']:>9.0f} {best['restacking']:>11.0f} "
          f"{best['training'] / best['alone']:>16.2f}x {best['training'] / best['restacking']:>21.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
