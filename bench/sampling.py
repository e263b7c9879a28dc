"""Sampling throughput: N sampling clients of distinct adapters, one after another versus at once.

For N = 1, 2, 4, 8, 16 clients, each asking for `--samples` samples of `--new` tokens after a
prompt of `--prompt` tokens (no stop, so every row runs to the end), three ways, in one run:

  (a) sequential  the N requests through the executor one after another (each waits for the last)
  (b) concurrent  the N requests submitted at once; the executor decodes them in one batch
  (c) ceiling     a plain batched transformers decode of the same N x samples rows, no LoRA

printed as tokens/s with the ratios (b)/(a) and (b)/(c); each cell is the best of `--repeats`
interleaved runs (on a shared machine the best run is the one least disturbed by others: with
three, one cell of a run could still be 15% off the same cell of the next). Then the latency of
one training step (forward_backward + optim_step) of another adapter, alone and while 8 clients
sample. The model is a random-weight Llama built in a temp dir (nothing is downloaded).

How much (b) gains over (a) depends on what bounds the machine's 4-row step. Where the base
weights stream from memory at every step, 32 rows cost little more than 4 and batching pays the
most; where they stay in a large cache, the 32-row matmuls are bound by arithmetic instead. On the
hidden-512 shape with 2 threads, (b)/(a) at N = 8 was 4.4x on a 2-core AMD EPYC with a 32 MiB L3,
whose 4-row matmuls read the 42 MB of base weights at about 5 GB/s, and 3.2x on a machine about
3.5 times as fast, which read up to 80 MB at 47 GB/s. The plain decode's own gain from 4 to 32
rows, (c) at N = 8 over (c) at N = 1, moved the same way: 3.5x and 2.2x.

    python bench/sampling.py --threads 2                       # CPU: the small and hidden-512 shapes
    python bench/sampling.py --device cuda --dtype bfloat16 --shapes 0.5b
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraplane.core.settings import RuntimeSettings
from loraplane.runtime.engine import AdamParams, Datum, Engine, FwdBwdWork, LoraSpec, SamplingParams
from loraplane.runtime.executor import Executor, OptimStep, Sample
from tests.utils.tiny_models import build_tiny_llama

#: model shapes: hidden, intermediate, layers, heads, kv heads
SHAPES = {
    "small": (256, 512, 4, 8, 4),
    "h512": (512, 1024, 4, 8, 8),
    "0.5b": (896, 4864, 24, 14, 2),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def requests(n: int, args: argparse.Namespace) -> list[Sample]:
    g = torch.Generator().manual_seed(n)
    params = SamplingParams(max_tokens=args.new, temperature=1.0, stop=[])
    return [Sample(f"ad{i}", torch.randint(3, 259, (args.prompt,), generator=g).tolist(), args.samples,
                   SamplingParams(**{**params.__dict__, "seed": i})) for i in range(n)]


def run_sequential(executor: Executor, reqs: list[Sample]) -> None:
    for req in reqs:
        executor.submit_sample(req)[1].result()


def run_concurrent(executor: Executor, reqs: list[Sample]) -> None:
    futures = [executor.submit_sample(req)[1] for req in reqs]
    for f in futures:
        f.result()


def run_plain(model: torch.nn.Module, reqs: list[Sample], new: int, device: torch.device) -> None:
    """The ceiling: one batched decode of every row with transformers' own cache, no adapters."""
    rows = [req.prompt for req in reqs for _ in range(req.num_samples)]
    ids = torch.tensor(rows, device=device)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.cache
        for step in range(new):
            tokens = torch.multinomial(out.logits[:, -1].float().softmax(-1), 1)
            tokens.tolist()
            if step == new - 1:
                break
            out = model(input_ids=tokens, cache=cache, use_cache=True)
            cache = out.cache


def on_model_thread(executor: Executor, fn: Any, *args: Any) -> Any:
    """Run `fn(*args)` on the executor's model thread, between its turns.

    The ceiling runs where the runtime's own work runs: torch's CPU thread pool belongs to the thread
    that calls it, so a second thread running models keeps a second pool, whose idle workers spin
    against the first one's on a small machine and slow whichever column runs next.
    """
    return executor.call(lambda _engine: fn(*args), "bench").result()


def timed(fns: list, device: torch.device, repeats: int) -> list[float]:
    """Best seconds of each function, runs interleaved so that load changes hit every column alike."""
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples, strict=True):
            sync(device)
            started = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - started)
    return [min(s) for s in samples]


def training_step(executor: Executor, adapter: str, seq: list[int], device: torch.device) -> float:
    g = torch.Generator().manual_seed(seq[0])
    data = []
    for _ in range(4):
        ids = torch.randint(3, 259, (65,), generator=g)
        data.append(Datum(ids[:-1].to(device), {"target_tokens": ids[1:].to(device)}))
    started = time.perf_counter()
    executor.submit(adapter, seq[0], FwdBwdWork(adapter, data))
    _, step = executor.submit(adapter, seq[0] + 1, OptimStep(adapter, AdamParams(learning_rate=1e-4)))
    step.result()
    seq[0] += 2
    return time.perf_counter() - started


def bench_shape(shape: str, args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM

    hidden, inter, layers, heads, kv = SHAPES[shape]
    counts = [int(x) for x in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "model", hidden_size=hidden, intermediate_size=inter,
                                     num_layers=layers, num_heads=heads, num_kv_heads=kv)
        engine = Engine(str(model_dir), base_model=f"bench-{shape}", device=args.device, dtype=args.dtype)
        plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=engine.dtype).to(engine.device).eval()
    executor = Executor(engine, RuntimeSettings(max_resident_adapters=max(counts) + 1, max_adapters=max(counts) + 1,
                                                kv_cache_bytes=1 << 40))
    try:
        for i in range(max(counts)):
            executor.create_adapter(f"ad{i}", LoraSpec(rank=args.rank, alpha=2.0 * args.rank, seed=i)).result()
        executor.create_adapter("trainee", LoraSpec(rank=args.rank, seed=99)).result()
        print(f"\nmodel {shape} (hidden {hidden}, {layers} layers) on {engine.device} {engine.dtype}, rank {args.rank}, "
              f"{args.samples} samples x {args.prompt} prompt + {args.new} new tokens per client, "
              f"torch threads {torch.get_num_threads()}, best of {args.repeats}")
        header = (f"{'N':>3} {'rows':>5} {'(a) seq tok/s':>14} {'(b) conc tok/s':>15} {'(c) plain tok/s':>16} "
                  f"{'(b)/(a)':>8} {'(b)/(c)':>8}")
        print(header)
        print("-" * len(header))
        for n in counts:
            reqs = requests(n, args)
            t_a, t_b, t_c = timed([lambda r=reqs: run_sequential(executor, r),
                                   lambda r=reqs: run_concurrent(executor, r),
                                   lambda r=reqs: on_model_thread(executor, run_plain, plain, r, args.new,
                                                                  engine.device)],
                                  engine.device, args.repeats)
            tokens = n * args.samples * args.new
            print(f"{n:>3} {n * args.samples:>5} {tokens / t_a:>14.0f} {tokens / t_b:>15.0f} {tokens / t_c:>16.0f} "
                  f"{t_a / t_b:>7.2f}x {t_c / t_b:>7.2f}x", flush=True)

        seq = [1]
        alone = statistics.median(training_step(executor, "trainee", seq, engine.device) for _ in range(5))
        long = SamplingParams(max_tokens=100_000, temperature=1.0, stop=[])
        stop = threading.Event()
        during: list[float] = []

        def samplers() -> None:
            while not stop.is_set():
                reqs = [Sample(f"ad{i}", list(range(3, 3 + args.prompt)), args.samples,
                               SamplingParams(**{**long.__dict__, "max_tokens": args.new * 4})) for i in range(8)]
                run_concurrent(executor, reqs)

        thread = threading.Thread(target=samplers, daemon=True)
        thread.start()
        while engine.decoder.decode_rows < 8 * args.samples:
            time.sleep(0.001)
        for _ in range(5):
            during.append(training_step(executor, "trainee", seq, engine.device))
        stop.set()
        thread.join()
        busy = statistics.median(during)
        print(f"training step (4 x 64 tokens + optim_step, median of 5): alone {alone * 1000:.1f} ms, "
              f"while 8 clients sample {busy * 1000:.1f} ms ({busy / alone:.2f}x)", flush=True)
    finally:
        executor.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shapes", default="small,h512", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--clients", default="1,2,4,8,16")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for shape in args.shapes.split(","):
        bench_shape(shape, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
