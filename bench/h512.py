"""The hidden-512 bench model that several benchmarks time the decode batch on.

A random-weight Llama (hidden 512, intermediate 1024, 4 layers, 8 heads and 8 key/value heads of
64) built in a temp dir and loaded on the CPU in fp32: nothing is downloaded, and every benchmark
that cites "the hidden-512 bench model" means this one.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from loraplane.core.settings import RuntimeSettings
from loraplane.runtime.engine import Engine, LoraSpec
from loraplane.runtime.executor import Executor
from tests.utils.tiny_models import build_tiny_llama

LAYERS, KV_HEADS, HEAD_DIM = 4, 8, 64


def h512_engine() -> Engine:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "model", hidden_size=KV_HEADS * HEAD_DIM, intermediate_size=1024,
                                     num_layers=LAYERS, num_heads=KV_HEADS, num_kv_heads=KV_HEADS)
        return Engine(str(model_dir), base_model="bench-h512", device="cpu", dtype="float32")


@contextlib.contextmanager
def h512_executor(adapters: int, room: int = 0) -> Iterator[Executor]:
    """An executor over `h512_engine()` with adapters `ad0 ...` of rank 16, and `room` for that
    many more, every one resident and no KV budget to wait for; closed on the way out."""
    slots = adapters + room
    executor = Executor(h512_engine(), RuntimeSettings(max_resident_adapters=slots, max_adapters=slots,
                                                       kv_cache_bytes=1 << 40))
    try:
        for i in range(adapters):
            executor.create_adapter(f"ad{i}", LoraSpec(rank=16, alpha=32.0, seed=i)).result()
        yield executor
    finally:
        executor.close()


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
