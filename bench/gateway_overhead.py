"""Latency the gateway adds: the same forward_backward through the SDK + gateway vs straight to the runtime.

    python bench/gateway_overhead.py [--iterations 200] [--batch 4] [--seq 32]

Builds the tiny test model and serves the single-node app (gateway + in-process runtime) on a
loopback port, in a child process, with uvicorn configured as `loraplane serve` configures it; the
clients run in this process, as they do in use (sharing the server's interpreter lock would charge
their work to the gateway). Times, per op (a submit and its result), the same forward_backward
batch and optim_step on three adapters of the one runtime, so every path does the same model work:

* sdk+gw: the official SDK's `forward_backward(...).result()` / `optim_step(...).result()`;
* httpx+gw: the same requests from a bare httpx client (the gateway's cost without the SDK's);
* runtime: straight to the runtime's internal API over loopback HTTP (the same runtime, served on
  a second port), with the runtime client, long-polled to completion: what a caller gets without
  the gateway;
* direct: the runtime's internal API on the in-process transport (no HTTP at all), for reference;
* 2xrtt: two GET /healthz from the httpx client: the HTTP floor of any submit + retrieve.

The paths run interleaved in a rotating order, so load drift hits all alike. Added latency is a
path's p50 (p99) minus the runtime path's: the gateway's hop (and, for sdk+gw, the SDK's own
client-side work); "gw work" is the bare client's time less the in-process runtime and the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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
from loraplane.singlenode.server import ServeConfig, build_app, default_runtime_app
from tests.utils.tiny_models import build_tiny_llama

KEY = "tml-bench-0123456789"
OPS = ("forward_backward", "optim_step")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def batch_tokens(batch: int, seq: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [list(map(int, rng.integers(3, 250, size=seq + 1))) for _ in range(batch)]


def proto_body(rows: list[list[int]], seq_id: int, model_id: str) -> bytes:
    """The ForwardBackwardRequest the SDK sends for `rows` (token ids; targets are shifted by one)."""
    req = pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, loss_fn="cross_entropy")
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
    """uvicorn on a free loopback port in a thread, configured as `loraplane serve` configures it
    (its loop factory: uvloop when installed; httptools; no access log); `call` runs a coroutine
    on the server's loop."""

    def __init__(self, app: Any, runtime_app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        # The same runtime app, also on its own port (its lifespan runs with the gateway's).
        self.runtime_server = uvicorn.Server(uvicorn.Config(
            runtime_app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="off"))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, args=(config.get_loop_factory(),), daemon=True)
        self.thread.start()
        while not (self.server.started and self.runtime_server.started):
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        self.runtime_url = f"http://127.0.0.1:{self.runtime_server.servers[0].sockets[0].getsockname()[1]}"

    def _run(self, loop_factory: Any) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await asyncio.gather(self.server.serve(), self.runtime_server.serve())

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())

    def call(self, coro: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.server.should_exit = self.runtime_server.should_exit = True
        self.thread.join(timeout=30)


class SdkPath:
    """(a) the official SDK through the gateway, on its own training run."""

    def __init__(self, client: Any, data: list[Any], adam: Any) -> None:
        self.client, self.data, self.adam = client, data, adam

    def forward_backward(self) -> float:
        start = time.perf_counter()
        self.client.forward_backward(self.data, "cross_entropy").result()
        return time.perf_counter() - start

    def optim_step(self) -> float:
        start = time.perf_counter()
        self.client.optim_step(self.adam).result()
        return time.perf_counter() - start


class HttpPath:
    """(b) the same calls through the gateway with a bare httpx client on its own event loop (in
    this thread), on a second training run: the gateway's share without the SDK's."""

    def __init__(self, url: str, model_id: str, rows: list[list[int]], adam: dict[str, Any]) -> None:
        import httpx

        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=60)
        self.model_id, self.rows, self.adam, self.seq = model_id, rows, adam, 1

    async def _op(self, submit: Any) -> float:
        start = time.perf_counter()
        rid = (await submit).json()["request_id"]
        while True:
            resp = await self.http.post("/api/v1/retrieve_future", json={"request_id": rid})
            if "protobuf" in resp.headers["content-type"] or resp.json().get("type") != "try_again":
                return time.perf_counter() - start

    def forward_backward(self) -> float:
        body = proto_body(self.rows, self.seq, self.model_id)
        self.seq += 1
        return self.loop.run_until_complete(self._op(self.http.post(
            "/api/v1/forward_backward", content=body, headers={"content-type": "application/x-protobuf"})))

    def optim_step(self) -> float:
        op = {"model_id": self.model_id, "seq_id": self.seq, "adam_params": self.adam, "type": "optim_step"}
        self.seq += 1
        return self.loop.run_until_complete(self._op(self.http.post("/api/v1/optim_step", json=op)))

    async def _round_trips(self) -> float:
        start = time.perf_counter()
        await self.http.get("/healthz")
        await self.http.get("/healthz")
        return time.perf_counter() - start

    def round_trips(self) -> float:
        """Two trivial requests (GET /healthz) on the same connection: the floor under any op
        made of a submit and a retrieve, whatever the gateway does."""
        return self.loop.run_until_complete(self._round_trips())

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


class RuntimeHttpPath:
    """(c) straight to the runtime's internal API over loopback HTTP with the runtime client, on a
    third adapter of the same runtime, in this process like the other clients."""

    def __init__(self, url: str, rows: list[list[int]], adam: dict[str, Any]) -> None:
        from loraplane.clients.runtime import RuntimeClient

        self.loop = asyncio.new_event_loop()
        self.client = RuntimeClient(url, timeout=60)
        self.rows, self.adam, self.seq, self.adapter = rows, adam, 1, "bench-runtime-http"
        self.loop.run_until_complete(self.client.create_adapter(self.adapter, rank=8, seed=0, expect_seq=1))

    async def _op(self, submit: Any) -> float:
        start = time.perf_counter()
        rid = await submit
        while True:
            _kind, body = await self.client.result(rid, wait=30)
            if not (isinstance(body, dict) and body.get("status") == "pending"):
                return time.perf_counter() - start

    def forward_backward(self) -> float:
        body = proto_body(self.rows, self.seq, "bench")
        self.seq += 1
        return self.loop.run_until_complete(self._op(self.client.submit_forward_backward(self.adapter, body)))

    def optim_step(self) -> float:
        op = {"seq_id": self.seq, "op": "optim_step", "adam_params": self.adam}
        self.seq += 1
        return self.loop.run_until_complete(self._op(self.client.submit_op(self.adapter, op)))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


class DirectPath:
    """(d) the same ops with the runtime's internal API on the in-process transport, on a fourth
    adapter of the same runtime, long-polled to completion. Lives in the server process."""

    def __init__(self, bg: Background, runtimes: Runtimes, rows: list[list[int]], adam: dict[str, Any]) -> None:
        self.bg, self.runtimes, self.rows, self.adam, self.seq = bg, runtimes, rows, adam, 1
        self.address, self.adapter = "http://runtime-0", "bench-direct"
        bg.call(runtimes.client(self.address).create_adapter(self.adapter, rank=8, seed=0, expect_seq=1))

    async def _op(self, submit: Any) -> float:
        start = time.perf_counter()
        rid = await submit
        while (await self.runtimes.result(self.address, rid, wait_s=30)).state == "pending":
            pass
        return time.perf_counter() - start

    def forward_backward(self) -> float:
        body = proto_body(self.rows, self.seq, "bench")
        self.seq += 1
        return self.bg.call(self._op(self.runtimes.submit_forward_backward(self.address, self.adapter, body)))

    def optim_step(self) -> float:
        op = {"seq_id": self.seq, "op": "optim_step", "adam_params": self.adam}
        self.seq += 1
        return self.bg.call(self._op(self.runtimes.submit_op(self.address, self.adapter, op)))


def serve(conn: Any, args: argparse.Namespace) -> None:
    """The server process: the single-node app on a loopback port, and the direct path run on
    request, so the clients (SDK, httpx) live in another process as they do in use."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "tiny")
        config = ServeConfig(models={"tiny": str(model_dir)}, keys=load_keys(inline=[f"bench={KEY}"]),
                             store_url=f"file://{tmp}/store",
                             runtime=RuntimeSettings(device="cpu", threads=args.threads))
        runtime_apps: list[Any] = []

        def keep_runtime_app(settings: RuntimeSettings) -> Any:
            runtime_apps.append(default_runtime_app(settings))
            return runtime_apps[-1]

        app = build_app(config, runtime_app=keep_runtime_app)
        bg = Background(app, runtime_apps[0])
        try:
            conn.send((bg.url, bg.runtime_url))
            adam = conn.recv()
            direct = DirectPath(bg, app.state.gateway.runtimes, batch_tokens(args.batch, args.seq), adam)
            conn.send("ready")
            while (op := conn.recv()) is not None:
                conn.send(getattr(direct, op)())
        finally:
            bg.stop()


class RoundTrips:
    """(e) two GET /healthz through the same client as (b), in place of each op."""

    def __init__(self, http: HttpPath) -> None:
        self.forward_backward = self.optim_step = http.round_trips


class RemoteDirect:
    """The server process's DirectPath, driven through a pipe; times are measured over there."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def forward_backward(self) -> float:
        self.conn.send("forward_backward")
        return self.conn.recv()

    def optim_step(self) -> float:
        self.conn.send("optim_step")
        return self.conn.recv()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import tinker

    labels = ("sdk+gw", "httpx+gw", "runtime", "direct", "2xrtt")
    times: dict[str, dict[str, list[float]]] = {op: {k: [] for k in labels} for op in OPS}
    conn, child_conn = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(child_conn, args), daemon=True)
    server.start()
    try:
        url, runtime_url = conn.recv()
        service = tinker.ServiceClient(base_url=url, api_key=KEY)
        client = service.create_lora_training_client(base_model="tiny", rank=8, seed=0).result()
        other = service.create_lora_training_client(base_model="tiny", rank=8, seed=0).result()
        rows = batch_tokens(args.batch, args.seq)
        data = [tinker.Datum(model_input=tinker.ModelInput.from_ints(t[:-1]),
                             loss_fn_inputs={"target_tokens": t[1:], "weights": [1.0] * (len(t) - 1)}) for t in rows]
        adam = tinker.AdamParams(learning_rate=1e-4)
        conn.send(adam.model_dump())
        conn.recv()
        http = HttpPath(url, other.model_id, rows, adam.model_dump())
        runtime = RuntimeHttpPath(runtime_url, rows, adam.model_dump())
        paths = {"sdk+gw": SdkPath(client, data, adam), "httpx+gw": http, "runtime": runtime,
                 "direct": RemoteDirect(conn), "2xrtt": RoundTrips(http)}
        for i in range(args.warmup + args.iterations):
            # Interleaved, in a rotating order: drift in machine load hits every path alike.
            for label in labels[i % len(labels):] + labels[:i % len(labels)]:
                fb, opt = paths[label].forward_backward(), paths[label].optim_step()
                if i >= args.warmup:
                    times["forward_backward"][label].append(fb)
                    times["optim_step"][label].append(opt)
        http.close()
        runtime.close()
        service.close("success").result()
    finally:
        conn.send(None)
        server.join(timeout=60)

    print(f"tiny Llama, batch {args.batch} x {args.seq} tokens, {args.iterations} iterations (interleaved), "
          f"loopback, CPU")
    print("sdk+gw: official SDK through the gateway; httpx+gw: bare HTTP client through the gateway;")
    print("runtime: straight to the runtime API over loopback HTTP; direct: runtime API in process;")
    print("2xrtt: two GET /healthz, the HTTP floor of a submit + retrieve.")
    print("Rows starting with '+' are the latency added over the runtime path (the target: p50 < 2 ms);")
    print("'gw work' is httpx+gw less direct less 2xrtt: the gateway's own code.")
    print(f"{'op':<18}{'path':<10}{'p50 ms':>10}{'p99 ms':>10}")
    for name in OPS:
        direct, baseline = times[name]["direct"], times[name]["runtime"]
        for label in labels:
            series = times[name][label]
            print(f"{name:<18}{label:<10}{1e3 * statistics.median(series):>10.2f}{1e3 * percentile(series, 0.99):>10.2f}")
        for label in ("sdk+gw", "httpx+gw"):
            series = times[name][label]
            added50 = 1e3 * (statistics.median(series) - statistics.median(baseline))
            added99 = 1e3 * (percentile(series, 0.99) - percentile(baseline, 0.99))
            print(f"{name:<18}{'+' + label:<10}{added50:>10.2f}{added99:>10.2f}")
        floor = times[name]["2xrtt"]
        work = 1e3 * (statistics.median(times[name]["httpx+gw"]) - statistics.median(direct) - statistics.median(floor))
        print(f"{name:<18}{'gw work':<10}{work:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
