"""A runtime that answers the runtime API (docs/runtime-api.md) at once, without a model.

Used by the operator tests that are about scheduling, restores and idempotence rather than
training, and by bench/operator_scale.py. Training advances one step per GET of its status,
so tests decide how far it gets; `hold_at` stops it at a step until released.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections import Counter
from typing import Any

from aiohttp import web


class FakeRuntime:
    """One fake runtime process on 127.0.0.1 (own thread and loop)."""

    def __init__(self, base_model: str = "tiny", *, max_adapters: int = 8, hold_at: int | None = None) -> None:
        self.base_model = base_model
        self.max_adapters = max_adapters
        self.hold_at = hold_at  #: training stops advancing at this step while set
        self.ready = True
        self.reject_creates = False  #: answer creates with 400, as a runtime refusing the config would
        self.adapters: dict[str, dict[str, Any]] = {}  #: adapter id -> AdapterInfo
        self.trains: dict[str, dict[str, Any]] = {}  #: adapter id -> run (request + TrainStatus)
        self.results: dict[str, dict[str, Any]] = {}  #: request id -> result body
        self.calls: Counter[str] = Counter()  #: "POST /v1/adapters" -> count
        self.loads: list[dict[str, Any]] = []  #: bodies of load calls, in order
        self.ops: list[dict[str, Any]] = []  #: bodies of submitted ops (save_state...), in order
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeRuntime:
        sock = socket.socket()
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        started = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._runner = web.AppRunner(self._app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert started.wait(5)
        return self

    def stop(self) -> None:
        """Kill it: connections are refused from now on."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = None

    # -- API ----------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        r = app.router
        r.add_get("/readyz", self._readyz)
        r.add_get("/v1/adapters", self._list)
        r.add_post("/v1/adapters", self._create)
        r.add_get("/v1/adapters/{id}", self._get)
        r.add_delete("/v1/adapters/{id}", self._delete)
        r.add_post("/v1/adapters/{id}/load", self._load)
        r.add_post("/v1/adapters/{id}/offload", self._offload)
        r.add_post("/v1/adapters/{id}/ops", self._op)
        r.add_get("/v1/results/{rid}", self._result)
        r.add_post("/v1/adapters/{id}/train", self._train)
        r.add_get("/v1/adapters/{id}/train", self._train_status)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else request.path
        self.calls[f"{request.method} {route}"] += 1
        return await handler(request)

    async def _readyz(self, _: web.Request) -> web.Response:
        body = {
            "ready": self.ready,
            "base_model": self.base_model,
            "adapters": {"resident": len(self.adapters), "offloaded": 0, "total": len(self.adapters)},
            "capacity": {"max_adapters": self.max_adapters, "free_slots": self.max_adapters - len(self.adapters)},
            "queue_depth": 0,
        }
        return web.json_response(body, status=200 if self.ready else 503)

    def _info(self, aid: str, config: dict[str, Any], step: int = 0) -> dict[str, Any]:
        keys = ("rank", "alpha", "seed", "train_attn", "train_mlp", "train_unembed")
        return {"adapter_id": aid, "kind": "train", **{k: config.get(k) for k in keys}, "step": step,
                "resident": True, "last_used": time.time(), "next_seq": config.get("expect_seq", 1)}

    async def _list(self, _: web.Request) -> web.Response:
        return web.json_response({"adapters": list(self.adapters.values())})

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        aid = body["adapter_id"]
        if self.reject_creates:
            return web.json_response({"detail": "rank too large for this runtime", "field": "rank"}, status=400)
        if aid in self.adapters:
            return web.json_response(self.adapters[aid], status=200)
        if len(self.adapters) >= self.max_adapters:
            return web.json_response({"detail": "no free slot", "category": "server"}, status=503)
        self.adapters[aid] = self._info(aid, body)
        return web.json_response(self.adapters[aid], status=201)

    async def _get(self, request: web.Request) -> web.Response:
        info = self.adapters.get(request.match_info["id"])
        return web.json_response(info) if info else web.json_response({"detail": "unknown adapter"}, status=404)

    async def _delete(self, request: web.Request) -> web.Response:
        aid = request.match_info["id"]
        if self.adapters.pop(aid, None) is None:
            return web.json_response({"detail": "unknown adapter"}, status=404)
        run = self.trains.get(aid)
        if run is not None and self._status(run)["state"] == "running":
            run["error"] = "the adapter was deleted"  # as the runtime does: the run stays, failed
        return web.Response(status=204)

    async def _load(self, request: web.Request) -> web.Response:
        aid, body = request.match_info["id"], await request.json()
        self.loads.append({"adapter_id": aid, **body})
        step = int(str(body["source"]).rsplit("step-", 1)[-1]) if "step-" in str(body["source"]) else 0
        self.adapters[aid] = self._info(aid, {"rank": 8}, step=step)
        return web.json_response(self.adapters[aid])

    async def _offload(self, request: web.Request) -> web.Response:
        info = self.adapters[request.match_info["id"]]
        info["resident"] = False
        return web.json_response(info)

    async def _op(self, request: web.Request) -> web.Response:
        aid, body = request.match_info["id"], await request.json()
        rid = f"r{next(self._ids)}"
        self.ops.append({"adapter_id": aid, **body})
        step = self.adapters.get(aid, {}).get("step", 0)
        self.results[rid] = {"status": "done", "result": {"dest": body.get("dest"), "step": step, "size_bytes": 1}}
        return web.json_response({"request_id": rid}, status=202)

    async def _result(self, request: web.Request) -> web.Response:
        result = self.results.get(request.match_info["rid"])
        return web.json_response(result) if result else web.json_response({"detail": "unknown"}, status=404)

    async def _train(self, request: web.Request) -> web.Response:
        aid, body = request.match_info["id"], await request.json()
        if aid not in self.adapters:
            return web.json_response({"detail": "unknown adapter"}, status=404)
        if aid in self.trains and self._status(self.trains[aid])["state"] == "running":
            return web.json_response(self._status(self.trains[aid]), status=200)
        self.trains[aid] = {"request": body, "step": body.get("start_step", 0), "last_checkpoint": None}
        return web.json_response(self._status(self.trains[aid]), status=202)

    async def _train_status(self, request: web.Request) -> web.Response:
        run = self.trains.get(request.match_info["id"])
        if run is None:
            return web.json_response({"detail": "no run"}, status=404)
        total = run["request"].get("steps") or 1
        if run.get("error") is None and run["step"] < total and (self.hold_at is None or run["step"] < self.hold_at):
            run["step"] += 1
            if request.match_info["id"] in self.adapters:  # the adapter's optimizer step follows the run
                self.adapters[request.match_info["id"]]["step"] = run["step"]
            every = run["request"].get("checkpoint_every") or 0
            if every and run["step"] % every == 0 and run["step"] < total:
                url = f"{run['request']['checkpoint_prefix']}/step-{run['step']}"
                run["last_checkpoint"] = {"url": url, "step": run["step"]}
            if run["step"] == total:
                run["last_checkpoint"] = {"url": run["request"]["output"], "step": total}
        return web.json_response(self._status(run))

    def _status(self, run: dict[str, Any]) -> dict[str, Any]:
        total = run["request"].get("steps") or 1
        state = "failed" if run.get("error") else "succeeded" if run["step"] >= total else "running"
        return {"state": state, "step": run["step"],
                "total_steps": total, "loss": 2.0 / (1 + run["step"]), "tokens": 100 * run["step"],
                "last_checkpoint": run["last_checkpoint"], "error": run.get("error")}
