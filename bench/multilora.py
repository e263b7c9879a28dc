"""Multi-LoRA throughput: N adapters trained one at a time versus batched into one engine pass.

For N = 1, 2, 4, 8 adapters and T tokens per adapter per step, one training step of every adapter
(forward_backward + optim_step) is timed in three ways, each the median of several runs:

  (a) sequential  one engine.forward_backward per adapter (one adapter per batch), then its optim_step
  (b) batched     one engine.forward_backward over all adapters' works, then each optim_step
  (c) executor    the same ops submitted to the executor (which batches them itself), end to end

and printed as examples/s with the ratio (b)/(a). The model is a random-weight Llama built in a temp
dir (nothing is downloaded); `--shape 0.5b` gives a Qwen2.5-0.5B-like body for GPU runs.

    python bench/multilora.py                                   # CPU, hidden 256, 4 layers
    python bench/multilora.py --device cuda --dtype bfloat16 --shape 0.5b
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraplane.core.settings import RuntimeSettings
from loraplane.runtime.engine import AdamParams, Datum, Engine, FwdBwdWork, LoraSpec
from loraplane.runtime.executor import Executor, OptimStep
from tests.utils.tiny_models import build_tiny_llama

#: model shapes: hidden, intermediate, layers, heads, kv heads
SHAPES = {
    "tiny": (64, 128, 2, 4, 2),
    "small": (256, 512, 4, 8, 4),
    "0.5b": (896, 4864, 24, 14, 2),
}
PARAMS = AdamParams(learning_rate=1e-4)


def make_works(n: int, tokens: int, examples: int, device: torch.device) -> list[FwdBwdWork]:
    g = torch.Generator().manual_seed(tokens * 100 + n)
    works = []
    for i in range(n):
        data = []
        for _ in range(examples):
            ids = torch.randint(3, 259, (tokens + 1,), generator=g)
            data.append(Datum(tokens=ids[:-1].to(device), loss_inputs={
                "target_tokens": ids[1:].to(device), "weights": torch.ones(tokens, device=device)}))
        works.append(FwdBwdWork(adapter_id=f"ad{i}", data=data, loss_fn="cross_entropy"))
    return works


def sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def step_sequential(engine: Engine, works: list[FwdBwdWork]) -> None:
    for work in works:
        [result] = engine.forward_backward([work])
        if isinstance(result, Exception):
            raise result
        engine.optim_step(work.adapter_id, PARAMS)


def step_batched(engine: Engine, works: list[FwdBwdWork]) -> None:
    for result in engine.forward_backward(works):
        if isinstance(result, Exception):
            raise result
    for work in works:
        engine.optim_step(work.adapter_id, PARAMS)


def step_executor(executor: Executor, works: list[FwdBwdWork]) -> None:
    futures = []
    for work in works:
        futures.append(executor.submit(work.adapter_id, None, work)[1])
        futures.append(executor.submit(work.adapter_id, None, OptimStep(work.adapter_id, PARAMS))[1])
    for f in futures:
        f.result()


def on_model_thread(executor: Executor | None, fn) -> None:
    """Run `fn` on the executor's model thread (which owns the engine), or here without one."""
    if executor is None:
        fn()
    else:
        executor.call(lambda _engine: fn()).result()


def timed(fns: list, engine: Engine, repeats: int, warmup: int) -> list[float]:
    """Median seconds of each function; runs are interleaved (a, b, c, a, b, c, ...) so that a
    change in the machine's load during the measurement hits every column alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(engine)
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples, strict=True):
            started = time.perf_counter()
            fn()
            sync(engine)
            out.append(time.perf_counter() - started)
    return [statistics.median(s) for s in samples]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--adapters", default="1,2,4,8")
    parser.add_argument("--tokens", default="64,512", help="tokens per adapter per step")
    parser.add_argument("--examples", type=int, default=1, help="examples (rows) per adapter per step")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--no-executor", action="store_true", help="skip the (c) executor column")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    hidden, inter, layers, heads, kv = SHAPES[args.shape]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "model", hidden_size=hidden, intermediate_size=inter,
                                     num_layers=layers, num_heads=heads, num_kv_heads=kv)
        engine = Engine(str(model_dir), base_model=f"bench-{args.shape}", device=args.device, dtype=args.dtype)
    counts = [int(x) for x in args.adapters.split(",")]
    executor = None if args.no_executor else Executor(
        engine, RuntimeSettings(max_resident_adapters=max(counts), max_batch_tokens=1 << 30))
    for i in range(max(counts)):
        spec = LoraSpec(rank=args.rank, alpha=2.0 * args.rank, seed=i)
        if executor is None:
            engine.create_adapter(f"ad{i}", spec)
        else:
            executor.create_adapter(f"ad{i}", spec).result()

    print(f"model {args.shape} (hidden {hidden}, {layers} layers) on {engine.device} {engine.dtype}, "
          f"rank {args.rank}, {args.examples} example(s)/adapter/step, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    header = f"{'tokens':>6} {'N':>3} {'(a) seq ex/s':>13} {'(b) batch ex/s':>15} {'(b)/(a)':>8}"
    if executor is not None:
        header += f" {'(c) executor ex/s':>18} {'(c)/(a)':>8}"
    print(header)
    print("-" * len(header))
    try:
        for tokens in (int(x) for x in args.tokens.split(",")):
            for n in counts:
                works = make_works(n, tokens, args.examples, engine.device)
                examples = n * args.examples
                fns = [lambda w=works: on_model_thread(executor, lambda: step_sequential(engine, w)),
                       lambda w=works: on_model_thread(executor, lambda: step_batched(engine, w))]
                if executor is not None:
                    fns.append(lambda w=works: step_executor(executor, w))
                t_seq, t_bat, *t_ex = timed(fns, engine, args.repeats, args.warmup)
                line = (f"{tokens:>6} {n:>3} {examples / t_seq:>13.1f} {examples / t_bat:>15.1f} "
                        f"{t_seq / t_bat:>7.2f}x")
                if t_ex:
                    line += f" {examples / t_ex[0]:>18.1f} {t_seq / t_ex[0]:>7.2f}x"
                print(line, flush=True)
    finally:
        if executor is not None:
            executor.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
