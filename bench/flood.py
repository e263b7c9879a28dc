"""Flood: a well-behaved tenant's step latency, alone and while another tenant floods the server.

    python bench/flood.py [--steps 50] [--flood-requests 10000] [--seconds 120] [--concurrency 64]
                          [--sample-num 4] [--sample-tokens 16]

Starts `loraplane serve` on 127.0.0.1 (a free port) over the tiny test model, built in a temp dir,
with two tenants and the server's default limits. Then:

1. alone: alice trains through the official SDK, one forward_backward + optim_step at a time,
   `--steps` steps, each step's wall time recorded;
2. under flood: bob, from a separate process (tests/utils/flooding.py), sends forward_backward
   (on his own model) and asample requests (`--sample-num` x `--sample-tokens` each) in turn, as
   fast as `--concurrency` connections allow, never waiting for a result, until
   `--flood-requests` were sent or `--seconds` passed; meanwhile alice keeps training and every
   step she starts before the flood stops is recorded.

Prints p50/p99 of alice's step latency in both phases and their ratio, the flood's request count
and rate, its answers by HTTP status (200 accepted, 429 rate-limited, 413 over a cap, ...), and the
server's peak resident memory (VmHWM). Everything is loopback and bounded: the server is stopped
when the flood phase ends, whatever is still queued.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TINKER_TELEMETRY", "0")

import tinker

from tests.fuzz import served
from tests.fuzz.tinker_http import TinkerHttp, tokens_of
from tests.utils.tiny_models import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the cat sat on the mat", "a quick brown fox", "loraplane trains"]
#: how long alice's step in flight may still run once the flood stopped
GRACE_S = 30.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def sdk_batch() -> list[tinker.Datum]:
    out = []
    for text in TEXTS:
        tokens = tokens_of(text)
        out.append(tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]),
                                loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)}))
    return out


def timed_step(client: tinker.TrainingClient, data: list[tinker.Datum]) -> float:
    start = time.perf_counter()
    fb = client.forward_backward(data, "cross_entropy")
    client.optim_step(tinker.AdamParams(learning_rate=1e-3)).result()
    fb.result()
    return time.perf_counter() - start


# ---- the flooding tenant: tests/utils/flooding.py, in a process of its own ----------------------

def start_flood(url: str, key: str, model_id: str, sampler_id: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "tests.utils.flooding", url, key, model_id, sampler_id,
           "--requests", str(args.flood_requests), "--concurrency", str(args.concurrency),
           "--seconds", str(args.seconds), "--sample-num", str(args.sample_num),
           "--sample-tokens", str(args.sample_tokens)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "flooding"
    return proc


# ---- the run ---------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="loraplane-flood-") as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "tiny")
        server = served.start(model_dir, f"file://{tmp}/store", Path(tmp) / "serve.log",
                              rss_ceiling_bytes=args.rss_ceiling_mib * 2**20)
        try:
            return measure(server, args)
        finally:
            server.stop()
            if server.killed_at_rss_bytes:
                print(f"the server was killed at {server.killed_at_rss_bytes / 2**20:.0f} MiB resident "
                      f"(ceiling {args.rss_ceiling_mib} MiB)")


def measure(server: served.ServedGateway, args: argparse.Namespace) -> int:
    logging.getLogger("tinker").setLevel(logging.ERROR)  # its retry warnings would interleave with the table
    service = tinker.ServiceClient(base_url=server.url, api_key=served.KEYS["alice"])
    alice = service.create_lora_training_client(base_model=server.model, rank=8, seed=0).result()
    data = sdk_batch()
    timed_step(alice, data)  # warm-up
    alone = [timed_step(alice, data) for _ in range(args.steps)]

    bob = TinkerHttp(server.url, served.KEYS["bob"])
    session = bob.session()
    bob_model = bob.create_model(session, server.model)
    sampler = bob.ok_json("create_sampling_session", {"session_id": session, "sampling_session_seq_id": 0,
                                                      "base_model": server.model})["sampling_session_id"]
    bob.close()

    flood = start_flood(server.url, served.KEYS["bob"], bob_model, sampler, args)
    flooded: list[float] = []
    running: list[float] = []  # start time of alice's step in progress
    stop = threading.Event()

    def alice_loop() -> None:
        while not stop.is_set():
            running[:] = [time.perf_counter()]
            try:
                flooded.append(timed_step(alice, data))
            except Exception as exc:  # a failed step is a result of the flood, not of the bench
                print(f"alice's step failed under flood: {type(exc).__name__}: {exc}")
                return
            finally:
                running.clear()

    stepper = threading.Thread(target=alice_loop, name="alice", daemon=True)
    stepper.start()
    try:
        assert flood.stdout is not None
        line = flood.stdout.readline()
        flood.wait(timeout=60)
    finally:
        flood.kill()
    stop.set()
    stepper.join(timeout=GRACE_S)  # let the step in flight finish, within bounds
    unfinished = time.perf_counter() - running[0] if running else None
    report = json.loads(line) if line.strip() else None
    peak = server.peak_rss_bytes()
    if unfinished is not None:  # counted at its time so far: the flood's row is then a lower bound
        flooded.append(unfinished)
    print_table(alone, flooded, report, peak, server.alive(), unfinished)
    return 0


def print_table(alone: list[float], flooded: list[float], report: dict | None, peak_rss: int, alive: bool,
                unfinished: float | None) -> None:
    print()
    print(f"{'alice (SDK steps)':<22}{'steps':>7}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name, values in (("alone", alone), ("under flood", flooded)):
        if values:
            print(f"{name:<22}{len(values):>7}{percentile(values, 0.5) * 1e3:>10.1f}"
                  f"{percentile(values, 0.99) * 1e3:>10.1f}{max(values) * 1e3:>10.1f}")
        else:
            print(f"{name:<22}{0:>7}{'-':>10}{'-':>10}{'-':>10}")
    if alone and flooded:
        print(f"{'flood/alone':<22}{'':>7}{percentile(flooded, 0.5) / percentile(alone, 0.5):>9.2f}x"
              f"{percentile(flooded, 0.99) / percentile(alone, 0.99):>9.2f}x")
    if unfinished is not None:
        print(f"(under flood: alice's last step had not finished {unfinished:.1f} s after it started, "
              f"{GRACE_S:.0f} s after the flood stopped; it is counted at {unfinished:.1f} s, so that row is a lower bound)")
    print()
    if report is None:
        print("flood (bob): no report (the flood process did not finish)")
    else:
        rate = report["sent"] / max(report["seconds"], 1e-9)  # type: ignore[operator]
        hist = ", ".join(f"{k}: {v}" for k, v in sorted(report["statuses"].items()))  # type: ignore[union-attr]
        print(f"flood (bob): {report['sent']} requests in {report['seconds']:.1f} s ({rate:.0f}/s); "
              f"answers by status: {hist}")
    print(f"server peak RSS (VmHWM): {peak_rss / 2**20:.0f} MiB; server {'up' if alive else 'DOWN'} at the end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="alice's steps in the alone phase")
    parser.add_argument("--flood-requests", type=int, default=10_000, help="most requests the flooder sends")
    parser.add_argument("--seconds", type=float, default=120.0, help="most seconds the flood lasts")
    parser.add_argument("--concurrency", type=int, default=64, help="the flooder's parallel connections")
    parser.add_argument("--sample-num", type=int, default=4, help="num_samples of each flooding asample")
    parser.add_argument("--sample-tokens", type=int, default=16, help="max_tokens of each flooding asample")
    parser.add_argument("--rss-ceiling-mib", type=int, default=6144,
                        help="kill the server past this resident size (protects the machine)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
