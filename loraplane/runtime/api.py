"""The runtime's internal HTTP API (docs/runtime-api.md), a thin FastAPI adapter over the executor.

Callers: `loraplane runtime` serves it with uvicorn; single-node mode mounts the same ASGI app in
process behind `loraplane.clients.runtime.RuntimeClient`. Routes parse the body (`wire`),
call the executor or the training runs, and encode the answer; every `LoraplaneError` becomes its
status code with a JSON body in one handler, so a bad field is a 4xx naming it and never a crash.

Submitting an op and reading its result (twice per training step) take the fast lane
(`asgi.fastlane.FastLane`), which calls
`submit_step` / `read_result` directly; the FastAPI routes for them call the same functions.

The app can be built before the model is loaded (`RuntimeState.executor` is None): `/healthz`
answers at once and `/readyz` says 503 until `RuntimeState.attach` is called.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from loraplane.asgi.fastlane import FastLane, Handler
from loraplane.clients.runtime import SEQUENCES_HEADER, TENANT_HEADER
from loraplane.core import errors, runtime_ops
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import executor as ex
from loraplane.runtime import ops, reports, training, wire
from loraplane.runtime.engine import LoraSpec
from loraplane.runtime.metrics import PROMETHEUS_CONTENT_TYPE, RuntimeMetrics
from loraplane.runtime.request_log import RequestLog

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
#: longest a result request is held (seconds)
MAX_WAIT_S = 60.0


@dataclass
class RuntimeState:
    """What the routes serve: settings, and the executor once the model is loaded."""

    settings: RuntimeSettings
    max_body_bytes: int = 64 * 1024 * 1024
    metrics: RuntimeMetrics = field(default_factory=RuntimeMetrics)
    executor: ex.Executor | None = None
    trainings: training.TrainingRuns | None = None

    def attach(self, executor: ex.Executor) -> None:
        """Start serving `executor` (the model is loaded): `/readyz` turns 200."""
        self.metrics = executor.metrics
        self.trainings = training.TrainingRuns(executor)
        self.executor = executor


async def _executor(request: Request) -> ex.Executor:
    """The serving executor; 503 while the base model is still loading.

    `async def` although it never awaits: FastAPI runs a plain `def` dependency in a worker
    thread, and that hop cost more than the rest of a per-step call.
    """
    executor = request.app.state.runtime.executor
    if executor is None:
        raise errors.CapacityError("the base model is still loading; retry shortly")
    return executor


Exec = Annotated[ex.Executor, Depends(_executor)]


def create_app(state: RuntimeState) -> FastAPI:
    """Build the ASGI app over `state`."""
    app = FastAPI(title="loraplane runtime", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = state

    @app.exception_handler(errors.LoraplaneError)
    async def _loraplane_error(_: Request, exc: errors.LoraplaneError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(errors.invalid_input(exc.errors()).to_dict(), 400)

    for router in (_probe_routes(state), _adapter_routes(state), _op_routes(state)):
        app.include_router(router)
    app.add_middleware(FastLane, pick=step_lane(state), error_response=error_response)
    app.add_middleware(RequestLog)
    return app




def _probe_routes(state: RuntimeState) -> APIRouter:
    """Liveness, readiness (`health`) and Prometheus."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        alive = state.executor is None or state.executor.alive
        return JSONResponse({"status": "ok" if alive else "model thread stopped"}, 200 if alive else 503)

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        body = reports.health(state.settings, state.executor)
        return JSONResponse(body, 200 if body["ready"] else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)
    return router


def _adapter_routes(state: RuntimeState) -> APIRouter:
    """An adapter's life: create, load a saved state, read, offload, delete."""
    router = APIRouter()

    @router.get("/v1/adapters")
    async def list_adapters(executor: Exec) -> dict[str, Any]:
        return {"adapters": [reports.adapter_info(executor, a) for a in sorted(executor.engine.adapter_ids())]}

    @router.post("/v1/adapters")
    async def create_adapter(request: Request, executor: Exec) -> JSONResponse:
        body = wire.parse_body(runtime_ops.CreateAdapterBody, await read_json(request, state.max_body_bytes))
        spec = LoraSpec(rank=body.rank, alpha=body.alpha, seed=body.seed, train_attn=body.train_attn, train_mlp=body.train_mlp,
                        train_unembed=body.train_unembed)
        existed = executor.engine.has_adapter(body.adapter_id)
        await _wait(executor.create_adapter(body.adapter_id, spec, expect_seq=body.expect_seq))
        return JSONResponse(reports.adapter_info(executor, body.adapter_id), 200 if existed else 201)

    @router.post("/v1/adapters/{adapter_id}/load")
    async def load_adapter(adapter_id: str, request: Request, executor: Exec) -> dict[str, Any]:
        body = wire.parse_body(runtime_ops.LoadAdapterBody, await read_json(request, state.max_body_bytes))
        _check_adapter_id(adapter_id)
        await _wait(executor.load_adapter(adapter_id, body.source, body.optimizer, body.expect_seq))
        return reports.adapter_info(executor, adapter_id)

    @router.get("/v1/adapters/{adapter_id}")
    async def get_adapter(adapter_id: str, executor: Exec) -> dict[str, Any]:
        return reports.adapter_info(executor, adapter_id)

    @router.post("/v1/adapters/{adapter_id}/offload")
    async def offload_adapter(adapter_id: str, executor: Exec) -> dict[str, Any]:
        await _wait(executor.offload_adapter(adapter_id))
        return reports.adapter_info(executor, adapter_id)

    @router.delete("/v1/adapters/{adapter_id}", status_code=204)
    async def delete_adapter(adapter_id: str, executor: Exec) -> Response:
        await _wait(executor.delete_adapter(adapter_id))
        return Response(status_code=204)
    return router


def _op_routes(state: RuntimeState) -> APIRouter:
    """Ops of an adapter, sample requests, their results, declarative training runs."""
    router = APIRouter()

    @router.post("/v1/adapters/{adapter_id}/ops", status_code=202)
    async def submit_op(adapter_id: str, request: Request, executor: Exec) -> Response:
        return await submit_step(state, executor, adapter_id, request)

    @router.post("/v1/sample", status_code=202)
    async def submit_sample(request: Request, executor: Exec) -> dict[str, str]:
        body = wire.parse_body(runtime_ops.SampleBody, await read_json(request, state.max_body_bytes))
        request_id, _ = executor.submit_sample(wire.sample_from_body(body, executor.engine.vocab_size))
        return {"request_id": request_id}

    @router.get("/v1/results/{request_id}")
    async def result(
        request_id: str, executor: Exec, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0,
        owner: Annotated[str | None, Query(max_length=253)] = None,
    ) -> Response:
        return await read_result(executor, request_id, wait, owner)

    @router.post("/v1/adapters/{adapter_id}/train")
    async def start_training(adapter_id: str, request: Request, executor: Exec) -> JSONResponse:
        body = wire.parse_body(runtime_ops.TrainBody, await read_json(request, state.max_body_bytes))
        assert state.trainings is not None
        status, created = state.trainings.start(adapter_id, body)
        return JSONResponse(status.to_dict(), 202 if created else 200)

    @router.get("/v1/adapters/{adapter_id}/train")
    async def training_status(adapter_id: str, executor: Exec) -> dict[str, Any]:
        assert state.trainings is not None
        return state.trainings.status(adapter_id).to_dict()
    return router


# ---- the per-step calls ----------------------------------------------------------------------
# Submitting an op and reading its result happen once each per training step. The fast lane
# (`asgi.fastlane.FastLane`) hands them to `submit_step` / `read_result` without FastAPI's routing
# and dependency solving, which
# cost more than the calls themselves; the routes above call the same two functions.

async def submit_step(state: RuntimeState, executor: ex.Executor, adapter_id: str, request: Request) -> Response:
    """`POST /v1/adapters/{id}/ops`: protobuf forward/backward or a JSON op, queued; 202 with its id."""
    raw = await read_body(request, state.max_body_bytes)
    if request.headers.get("content-type", "").split(";")[0].strip() == PROTOBUF:
        sequences_url = request.headers.get(SEQUENCES_HEADER)
        # A compressed body's decoded size is unknown until decoded, and recorded sequences are read
        # from the store: both always off the loop.
        size = state.max_body_bytes if wire.is_compressed(raw) or sequences_url else len(raw)
        seq_id, payload = await off_loop(_decode_step, adapter_id, raw, state.max_body_bytes, sequences_url,
                                         size=size)
        tokens = ops.work_tokens(payload)
        if tokens > state.settings.max_request_tokens:
            raise errors.PayloadTooLarge(
                f"this forward_backward holds {tokens} tokens, over this runtime's limit of "
                f"{state.settings.max_request_tokens} per request; split the batch into several calls",
                field="data")
    else:
        body = wire.parse_body(runtime_ops.OpBody, _json(raw))
        seq_id, payload = body.seq_id, wire.op_from_body(adapter_id, body, keep_snapshots=state.settings.max_snapshots)
    request_id, _ = executor.submit(adapter_id, seq_id, payload, tenant=request.headers.get(TENANT_HEADER))
    return JSONResponse({"request_id": request_id}, 202)


#: Bodies up to this size are decoded on the event loop: a thread hop costs more than they do.
#: Larger ones (and every compressed one) decode in a worker thread, so that one big step never
#: holds up the other requests on the loop (in `loraplane serve`, every tenant's).
OFF_LOOP_BYTES = 256 * 1024


async def off_loop(fn: Any, *args: Any, size: int) -> Any:
    """`fn(*args)`, in a worker thread when `size` bytes of input make it worth one (I/O)."""
    if size <= OFF_LOOP_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def _decode_step(adapter_id: str, raw: bytes, max_bytes: int, sequences_url: str | None) -> tuple[int | None, Any]:
    return wire.decode_forward_backward(adapter_id, wire.decompress(raw, max_bytes), sequences_url)


async def read_result(executor: ex.Executor, request_id: str, wait: float, owner: str | None = None) -> Response:
    """`GET /v1/results/{id}`: held until the op is done or `wait` seconds pass; wakes on completion.

    With `owner`, a result that belongs to someone else (`ops.result_owner`) is as unknown as a
    missing one: a request id that leaked is no key to another tenant's results.
    """
    op = executor.lookup(request_id)
    if owner is not None and ops.result_owner(op.adapter_id, op.payload) != owner:
        raise errors.NotFound(f"unknown or expired request id {request_id!r}", field="request_id")
    if not op.future.done() and wait > 0:
        await asyncio.wait([asyncio.wrap_future(op.future)], timeout=wait)
    return encode_result(op)


def step_call(method: str, path: str) -> tuple[str, str] | None:
    """("submit", adapter id) or ("result", request id) for a per-step call, else None. Pure; called
    by the fast lane (`asgi.fastlane.FastLane`) on every request. Ids match as FastAPI's `{param}` does: one non-empty segment."""
    if method == "POST" and path.startswith("/v1/adapters/") and path.endswith("/ops"):
        ident = path[len("/v1/adapters/"):-len("/ops")]
        return ("submit", ident) if ident and "/" not in ident else None
    if method == "GET" and path.startswith("/v1/results/"):
        ident = path[len("/v1/results/"):]
        return ("result", ident) if ident and "/" not in ident else None
    return None


def wait_of(query: str | None) -> float:
    """The `wait` query parameter in seconds (default 0); InvalidInput naming it unless 0-60. Pure."""
    if query is None:
        return 0.0
    try:
        wait = float(query)
    except ValueError:
        raise errors.InvalidInput(f"wait: {query!r} is not a number of seconds", field="wait") from None
    if not 0 <= wait <= MAX_WAIT_S:  # also refuses nan
        raise errors.InvalidInput(f"wait: must be from 0 to {MAX_WAIT_S:g} seconds, got {query}", field="wait")
    return wait


def step_lane(state: RuntimeState) -> Callable[[dict[str, Any]], Handler | None]:
    """`FastLane`'s choice at the runtime: an op's submission and its result (`step_call`) go straight
    to `submit_step` and `read_result`; everything else goes to the app."""

    def pick(scope: dict[str, Any]) -> Handler | None:
        call = step_call(scope["method"], scope["path"])
        if call is None:
            return None
        kind, target = call

        async def handle(request: Request) -> Response:
            executor = await _executor(request)
            if kind == "submit":
                return await submit_step(state, executor, target, request)
            return await read_result(executor, target, wait_of(request.query_params.get("wait")),
                                     request.query_params.get("owner"))

        return handle

    return pick


def error_response(exc: errors.LoraplaneError) -> Response:
    return JSONResponse(exc.to_dict(), status_code=exc.status_code)


# ---- helpers (pure unless noted) -------------------------------------------------------------

def encode_result(op: ex.Op) -> Response:
    """The answer of `GET /v1/results/{id}` for an op in any state. No side effects."""
    if not op.future.done():
        return JSONResponse({"status": "pending"})
    exc = op.future.exception()
    if exc is not None:
        category = exc.category if isinstance(exc, errors.LoraplaneError) else "server"
        message = exc.message if isinstance(exc, errors.LoraplaneError) else f"{type(exc).__name__}: {exc}"
        return JSONResponse({"status": "failed", "error": message, "category": category})
    result = op.future.result()
    if op.kind in ex.FORWARD_KINDS:
        return Response(wire.encode_forward_backward_output(result), media_type=PROTOBUF)
    if op.kind == "sample":
        return Response(wire.encode_sample_response(result), media_type=PROTOBUF)
    return ResultJSON({"status": "done", "result": result})


class ResultJSON(JSONResponse):
    """JSON that spells non-finite floats as `NaN` / `Infinity`, as Python's json reads them: a
    metric may overflow (a loss of inf), and the answer must still reach the client, whose JSON
    parser accepts them, instead of failing the response."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode()


def _check_adapter_id(adapter_id: str) -> None:
    if not adapter_id or "/" in adapter_id or len(adapter_id) > 253:
        raise errors.InvalidInput(f"adapter_id {adapter_id!r} must be 1-253 characters without '/'",
                                  field="adapter_id")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (I/O)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(f"request body exceeds the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    return _json(await read_body(request, limit))


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.InvalidInput(f"body is not valid JSON: {exc}", field="body") from None


async def _wait(future: Any) -> Any:
    """Await a model-thread future from the event loop without blocking it."""
    return await asyncio.wrap_future(future)
