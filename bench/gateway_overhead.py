"""Latency the gateway adds: the same forward_backward through the SDK + gateway vs straight to the runtime.

    python bench/gateway_overhead.py [--iterations 50] [--batch 4] [--seq 32]

Builds the tiny test model, runs the single-node server (gateway + in-process runtime) on a
loopback port, and times, per op, (a) the official SDK's `forward_backward(...).result()` and
`optim_step(...).result()` through the gateway, and (b) the same op submitted with the runtime's
internal API on the in-process transport, polled to completion. The two use separate adapters of
the same runtime, so they do the same model work. Added latency = (a) - (b), at p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TINKER_TELEMETRY", "0")

import numpy as np
import torch
import uvicorn
from tinker.proto import tinker_public_pb2 as pb

from loraplane.api.auth import load_keys
from loraplane.api.dataplane import Runtimes
from loraplane.core.settings import RuntimeSettings
from loraplane.singlenode.server import ServeConfig, build_app
from tests.utils.tiny_models import build_tiny_llama

KEY = "tml-bench-0123456789"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def batch_tokens(batch: int, seq: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [list(map(int, rng.integers(3, 250, size=seq + 1))) for _ in range(batch)]


def proto_body(rows: list[list[int]], seq_id: int) -> bytes:
    req = pb.ForwardBackwardRequest(model_id="bench", seq_id=seq_id, loss_fn="cross_entropy")
    for tokens in rows:
        datum = req.data.add()
        datum.model_input.add().encoded_text.tokens = np.asarray(tokens[:-1], dtype="<i4").tobytes()
        target = datum.loss_fn_inputs["target_tokens"]
        target.dense, target.dtype = np.asarray(tokens[1:], dtype="<i8").tobytes(), pb.DTYPE_INT64
        target.shape.append(len(tokens) - 1)
        weights = datum.loss_fn_inputs["weights"]
        weights.dense, weights.dtype = np.ones(len(tokens) - 1, dtype="<f4").tobytes(), pb.DTYPE_FLOAT32
        weights.shape.append(len(tokens) - 1)
    return req.SerializeToString()


class Background:
    """uvicorn on a free loopback port in a thread; `call` runs a coroutine on its loop."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        asyncio.run(main())

    def call(self, coro: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def raw_gateway(url: str, model_id: str, rows: list[list[int]], args: Any,
                      adam: dict[str, Any]) -> dict[str, list[float]]:
    """The same ops through the gateway with a bare httpx client: the gateway's share without the SDK's."""
    import httpx

    out: dict[str, list[float]] = {"forward_backward": [], "optim_step": []}
    headers = {"X-API-Key": KEY}
    # The SDK client above used seq 1..2n; this one continues its sequence on the same adapter.
    seq = 2 * (args.warmup + args.iterations) + 1
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        async def op(submit: Any) -> float:
            start = time.perf_counter()
            rid = (await submit()).json()["request_id"]
            while True:
                resp = await http.post("/api/v1/retrieve_future", json={"request_id": rid})
                if "protobuf" in resp.headers["content-type"] or resp.json().get("type") != "try_again":
                    return time.perf_counter() - start

        for i in range(args.warmup + args.iterations):
            body = proto_body(rows, seq)
            body = _with_model(body, model_id)
            fb = await op(lambda b=body: http.post("/api/v1/forward_backward", content=b,
                                                   headers={"content-type": "application/x-protobuf"}))
            opt = await op(lambda s=seq: http.post("/api/v1/optim_step", json={
                "model_id": model_id, "seq_id": s + 1, "adam_params": adam, "type": "optim_step"}))
            seq += 2
            if i >= args.warmup:
                out["forward_backward"].append(fb)
                out["optim_step"].append(opt)
    return out


def _with_model(body: bytes, model_id: str) -> bytes:
    req = pb.ForwardBackwardRequest()
    req.ParseFromString(body)
    req.model_id = model_id
    return req.SerializeToString()


async def direct_op(runtimes: Runtimes, address: str, adapter: str, submit: Any) -> float:
    start = time.perf_counter()
    rid = await submit()
    while (await runtimes.result(address, rid, wait_s=30)).state == "pending":
        pass
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import tinker

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "tiny")
        config = ServeConfig(models={"tiny": str(model_dir)}, keys=load_keys(inline=[f"bench={KEY}"]),
                             store_url=f"file://{tmp}/store",
                             runtime=RuntimeSettings(device="cpu", threads=args.threads))
        app = build_app(config)
        bg = Background(app)
        try:
            service = tinker.ServiceClient(base_url=bg.url, api_key=KEY)
            client = service.create_lora_training_client(base_model="tiny", rank=8, seed=0).result()
            rows = batch_tokens(args.batch, args.seq)
            data = [tinker.Datum(model_input=tinker.ModelInput.from_ints(t[:-1]),
                                 loss_fn_inputs={"target_tokens": t[1:], "weights": [1.0] * (len(t) - 1)}) for t in rows]
            adam = tinker.AdamParams(learning_rate=1e-4)
            sdk: dict[str, list[float]] = {"forward_backward": [], "optim_step": []}
            for i in range(args.warmup + args.iterations):
                t0 = time.perf_counter()
                client.forward_backward(data, "cross_entropy").result()
                t1 = time.perf_counter()
                client.optim_step(adam).result()
                t2 = time.perf_counter()
                if i >= args.warmup:
                    sdk["forward_backward"].append(t1 - t0)
                    sdk["optim_step"].append(t2 - t1)

            runtimes: Runtimes = app.state.gateway.runtimes
            address = "http://runtime-0"
            bg.call(runtimes.client(address).create_adapter("bench-direct", rank=8, seed=0, expect_seq=1))
            direct: dict[str, list[float]] = {"forward_backward": [], "optim_step": []}
            seq = 1
            for i in range(args.warmup + args.iterations):
                body = proto_body(rows, seq)
                fb = bg.call(direct_op(runtimes, address, "bench-direct",
                                       lambda b=body: runtimes.submit_forward_backward(address, "bench-direct", b)))
                op = {"seq_id": seq + 1, "op": "optim_step", "adam_params": adam.model_dump()}
                opt = bg.call(direct_op(runtimes, address, "bench-direct",
                                        lambda o=op: runtimes.submit_op(address, "bench-direct", o)))
                seq += 2
                if i >= args.warmup:
                    direct["forward_backward"].append(fb)
                    direct["optim_step"].append(opt)
            raw = asyncio.run(raw_gateway(bg.url, client.model_id, rows, args, adam.model_dump()))
            service.close("success").result()
        finally:
            bg.stop()

    print(f"tiny Llama, batch {args.batch} x {args.seq} tokens, {args.iterations} iterations, loopback, CPU")
    print("sdk+gw: official SDK through the gateway; httpx+gw: bare HTTP client through the gateway;")
    print("direct: runtime API in process. Rows starting with '+' are the latency added over direct.")
    print(f"{'op':<18}{'path':<10}{'p50 ms':>10}{'p99 ms':>10}")
    for name in ("forward_backward", "optim_step"):
        for label, series in (("sdk+gw", sdk[name]), ("httpx+gw", raw[name]), ("direct", direct[name])):
            print(f"{name:<18}{label:<10}{1e3 * statistics.median(series):>10.2f}{1e3 * percentile(series, 0.99):>10.2f}")
        for label, series in (("+sdk+gw", sdk[name]), ("+gw", raw[name])):
            added50 = 1e3 * (statistics.median(series) - statistics.median(direct[name]))
            added99 = 1e3 * (percentile(series, 0.99) - percentile(direct[name], 0.99))
            print(f"{name:<18}{label:<10}{added50:>10.2f}{added99:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
