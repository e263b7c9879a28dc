"""Fair share between tenants on one runtime: tenant A with 8 adapters, tenant B with 1.

Every adapter trains as fast as it can, as the SDK does (forward_backward and optim_step of the
next step submitted before the last step's results are read), in a thread of its own, submitting to one executor over a real engine (a random-weight Llama built in
a temp dir, nothing downloaded). A training pass holds about two adapters' steps
(`max_batch_tokens`). For each policy the bench runs B alone, then A and B together, and prints
side by side:

- B's share of the tokens the passes processed while both were backlogged (target >= 45% with equal
  weights, 75/25 within 5 points with weights 3:1 for A),
- B's step latency (p50, p99) alone and with A, and their ratio (target <= 2x),

with the fair-share policy on (equal weights, and 3:1) and off (passes rotate over adapters, the
behaviour before tenants were known).

Then the same with sampling: every adapter samples as fast as it can (two requests in flight, each
`--samples` sequences of `--sample-tokens` tokens, never stopping early) on a decode batch that
holds about two adapters' requests (`max_decode_rows`). Printed side by side with the policy on and
off (first come, first in): B's share of the tokens decoded while both were backlogged (target
>= 45%) and B's sample latency alone and with A (target <= 2x).

    python bench/fairness.py                 # 8 s per phase
    python bench/fairness.py --seconds 20
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraplane.core.settings import RuntimeSettings
from loraplane.runtime.engine import AdamParams, Datum, Engine, FwdBwdWork, LoraSpec
from loraplane.runtime.executor import Executor, OptimStep, Sample
from loraplane.runtime.sampling import SamplingParams
from tests.utils.tiny_models import build_tiny_llama

A_ADAPTERS = 8
#: steps each adapter keeps submitted ahead of the one it waits for
PIPELINE = 2
PARAMS = AdamParams(learning_rate=1e-4)


def work(adapter: str, tokens: int, seed: int) -> FwdBwdWork:
    ids = torch.randint(3, 259, (tokens + 1,), generator=torch.Generator().manual_seed(seed))
    datum = Datum(tokens=ids[:-1], loss_inputs={"target_tokens": ids[1:], "weights": torch.ones(tokens)})
    return FwdBwdWork(adapter_id=adapter, data=[datum], loss_fn="cross_entropy")


class Trainer(threading.Thread):
    """One adapter stepping as fast as it can until `stop`; records each step's latency and tokens."""

    def __init__(self, executor: Executor, adapter: str, tenant: str, tokens: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.executor, self.adapter, self.tenant, self.tokens, self.stop = executor, adapter, tenant, tokens, stop
        self.steps: list[tuple[float, float]] = []  #: (finished at, latency) per step

    def run(self) -> None:
        seq = 1
        in_flight: list[tuple[float, Any]] = []
        while not self.stop.is_set():
            # As the SDK does: the next step is submitted before the last one's results are read.
            while len(in_flight) < PIPELINE:
                started = time.perf_counter()
                self.executor.submit(self.adapter, seq, work(self.adapter, self.tokens, seq), tenant=self.tenant)
                _, opt = self.executor.submit(self.adapter, seq + 1, OptimStep(self.adapter, PARAMS),
                                              tenant=self.tenant)
                in_flight.append((started, opt))
                seq += 2
            started, opt = in_flight.pop(0)
            opt.result()
            self.steps.append((time.perf_counter(), time.perf_counter() - started))


class Sampler(threading.Thread):
    """One adapter sampling as fast as it can until `stop`; records each request's latency and tokens."""

    def __init__(self, executor: Executor, adapter: str, tenant: str, tokens: int, stop: threading.Event,
                 samples: int = 4) -> None:
        super().__init__(daemon=True)
        self.executor, self.adapter, self.tenant, self.stop = executor, adapter, tenant, stop
        self.samples, self.params = samples, SamplingParams(max_tokens=tokens, stop=[], seed=0)
        self.steps: list[tuple[float, float, int]] = []  #: (finished at, latency, tokens) per request

    def run(self) -> None:
        in_flight: list[tuple[float, Any]] = []
        prompt = list(range(3, 19))
        while not self.stop.is_set():
            while len(in_flight) < PIPELINE:
                request = Sample(self.adapter, prompt, self.samples, self.params, tenant=self.tenant)
                in_flight.append((time.perf_counter(), self.executor.submit_sample(request)[1]))
            started, future = in_flight.pop(0)
            result = future.result()
            now = time.perf_counter()
            self.steps.append((now, now - started, sum(len(seq.tokens) for seq in result.sequences)))
        for _, future in in_flight:  # none left in the decode batch when the executor closes
            future.result()


def phase(executor: Executor, trainers_of: dict[str, list[str]], tokens: int, seconds: float,
          warmup: float, kind: Callable[..., Trainer | Sampler] = Trainer) -> dict[str, list[tuple[float, ...]]]:
    """Run the tenants' trainers (or samplers) for `seconds` after `warmup`; their steps inside the window."""
    stop = threading.Event()
    trainers = [kind(executor, a, t, tokens, stop) for t, adapters in trainers_of.items() for a in adapters]
    for tr in trainers:
        tr.start()
    start = time.perf_counter() + warmup
    time.sleep(warmup + seconds)
    end = time.perf_counter()
    stop.set()
    for tr in trainers:
        tr.join()
    out: dict[str, list[tuple[float, ...]]] = {}
    for tr in trainers:
        out.setdefault(tr.tenant, []).extend(s for s in tr.steps if start <= s[0] <= end)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else (values[0] if values else float("nan"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per training step")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--samples", type=int, default=4, help="sequences per sample request")
    parser.add_argument("--sample-tokens", type=int, default=16, help="tokens per sampled sequence")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    adapters = {"a": [f"a{i}" for i in range(A_ADAPTERS)], "b": ["b0"]}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "model", hidden_size=256, intermediate_size=512, num_layers=4,
                                     num_heads=8, num_kv_heads=4)
        engine = Engine(str(model_dir), base_model="bench-fairness", device="cpu", dtype="float32")
    print(f"tenant a: {A_ADAPTERS} adapters, tenant b: 1; {args.tokens} tokens per step; a pass holds "
          f"{2 * args.tokens} tokens (two steps); {args.seconds:g} s per phase; torch threads {args.threads}")
    print_header()
    for label, fair, weights in (("fair share 1:1", True, {}), ("fair share 3:1 (a:b)", True, {"a": 3.0}),
                                 ("off (adapter rotation)", False, {})):
        settings = RuntimeSettings(max_batch_tokens=2 * args.tokens, max_resident_adapters=16, fair_share=fair,
                                   tenant_weights=weights)
        executor = Executor(engine, settings)
        try:
            create_adapters(executor, adapters)
            alone = phase(executor, {"b": adapters["b"]}, args.tokens, args.seconds, args.warmup)["b"]
            both = phase(executor, adapters, args.tokens, args.seconds, args.warmup)
            done = {t: len(s) * args.tokens for t, s in both.items()}
            print_row(label, done, [step[1] for step in alone], [step[1] for step in both.get("b", [])])
        finally:
            executor.close()
            delete_adapters(engine, adapters)
    print()
    sampling(engine, adapters, args)
    return 0


def create_adapters(executor: Executor, adapters: dict[str, list[str]]) -> None:
    for tenant_adapters in adapters.values():
        for i, adapter in enumerate(tenant_adapters):
            executor.create_adapter(adapter, LoraSpec(rank=8, alpha=16.0, seed=i)).result()


def delete_adapters(engine: Engine, adapters: dict[str, list[str]]) -> None:
    for tenant_adapters in adapters.values():
        for adapter in tenant_adapters:
            if engine.has_adapter(adapter):
                engine.delete_adapter(adapter)


def print_header() -> None:
    header = (f"{'policy':<22} {'b share':>8} {'a share':>8} {'b p50 alone':>12} {'b p50 with a':>13} "
              f"{'b p99 alone':>12} {'b p99 with a':>13} {'p50 ratio':>10}")
    print(header)
    print("-" * len(header))


def print_row(label: str, done: dict[str, int], alone_s: list[float], both_s: list[float]) -> None:
    """One policy's row: each tenant's share of the work done, B's latencies alone and with A."""
    total = sum(done.values()) or 1
    b_alone, b_both = [x * 1000 for x in alone_s], [x * 1000 for x in both_s]
    ratio = pct(b_both, 50) / pct(b_alone, 50)
    print(f"{label:<22} {done.get('b', 0) / total:>8.1%} {done.get('a', 0) / total:>8.1%} "
          f"{pct(b_alone, 50):>10.1f}ms {pct(b_both, 50):>11.1f}ms {pct(b_alone, 99):>10.1f}ms "
          f"{pct(b_both, 99):>11.1f}ms {ratio:>9.2f}x")


def sampling(engine: Engine, adapters: dict[str, list[str]], args: argparse.Namespace) -> None:
    """The sampling table: B's share of decoded tokens and its sample latency, policy on and off."""
    rows = 2 * args.samples
    print(f"sampling: {args.samples} x {args.sample_tokens} tokens per request, two in flight per adapter; "
          f"the decode batch holds {rows} rows (two requests)")
    print_header()
    for label, fair in (("fair share 1:1", True), ("off (first come)", False)):
        settings = RuntimeSettings(max_decode_rows=rows, max_resident_adapters=16, fair_share=fair)
        executor = Executor(engine, settings)
        try:
            create_adapters(executor, adapters)
            make = functools.partial(Sampler, samples=args.samples)
            alone = phase(executor, {"b": adapters["b"]}, args.sample_tokens, args.seconds, args.warmup, make)["b"]
            both = phase(executor, adapters, args.sample_tokens, args.seconds, args.warmup, make)
            done = {t: sum(int(s[2]) for s in steps) for t, steps in both.items()}
            print_row(label, done, [step[1] for step in alone], [step[1] for step in both.get("b", [])])
        finally:
            executor.close()
            delete_adapters(engine, adapters)


if __name__ == "__main__":
    raise SystemExit(main())
