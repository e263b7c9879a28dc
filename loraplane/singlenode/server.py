"""Single-node wiring: the gateway, one runtime per served base model, the embedded control plane.

Callers: `singlenode.cli` (`loraplane serve`), the demo, and the acceptance tests.

Design notes
============
The runtimes' ASGI apps are mounted in process: the gateway and the control plane reach them
through `RuntimeTransport`, an httpx transport that routes `http://<runtime name>/...` to the
runtime's app. No extra socket is opened, nothing else on the machine can reach the runtime's
internal API (it has no authentication of its own), and a per-step call costs a function call
instead of a loopback round trip. The runtimes' lifespans (model loading, the model thread) run
inside the gateway's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.metrics_core import Metric

from loraplane.api import limits
from loraplane.api.app import create_app
from loraplane.api.auth import KeyTable
from loraplane.api.dataplane import Runtimes
from loraplane.api.gateway import Gateway
from loraplane.clients import artifact_store
from loraplane.core import artifacts, errors, quotas
from loraplane.core.settings import GatewaySettings, OperatorSettings, RuntimeSettings
from loraplane.singlenode.controlplane import EmbeddedControlPlane, ServedRuntime
from loraplane.singlenode.jobstore import SqliteJobStore


class RuntimeTransport(httpx.AsyncBaseTransport):
    """Routes requests by host name to in-process ASGI apps.

    Calls the app directly rather than through `httpx.ASGITransport`: the request body is already
    in memory (the gateway's client sends bytes), so it is handed over in one message, and the
    answer is collected into one `httpx.Response`; two requests per training step go this way.
    An exception in the app propagates to the caller, as with `ASGITransport`.
    """

    def __init__(self, apps: dict[str, Any]) -> None:
        self._apps = dict(apps)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        app = self._apps.get(request.url.host)
        if app is None:
            raise httpx.ConnectError(f"no in-process runtime named {request.url.host!r}", request=request)
        body = await request.aread()
        url = request.url
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw], "scheme": url.scheme,
            "path": url.path, "raw_path": url.raw_path.split(b"?")[0], "query_string": url.query,
            "server": (url.host, url.port), "client": ("127.0.0.1", 0), "root_path": "",
        }
        sent = False
        done = asyncio.Event()
        status, headers, parts = 500, [], []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()  # a second read means the app listens for a disconnect: after the answer
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    parts.append(message["body"])
                if not message.get("more_body", False):
                    done.set()

        await app(scope, receive, send)
        return httpx.Response(status, headers=headers, content=b"".join(parts), request=request)


@dataclass
class ServeConfig:
    """What `loraplane serve` was asked to run."""

    #: base model name (what clients pass) -> local model directory
    models: dict[str, str]
    keys: KeyTable
    store_url: str = field(default_factory=artifacts.default_store_url)
    #: where the job store lives (`jobs.sqlite`); None: beside a file:// store, else the default data dir
    data_dir: Path | None = None
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    #: template for every runtime (device, dtype, threads, budgets); base_model/model_path are filled in
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    #: the job life cycle's intervals (health polls, progress writes), as for the operator
    control: OperatorSettings = field(default_factory=OperatorSettings)

    def jobs_path(self) -> Path:
        """The SQLite file of the job store."""
        if self.data_dir is not None:
            return Path(self.data_dir) / "jobs.sqlite"
        if self.store_url.startswith("file://"):
            return Path(self.store_url.removeprefix("file://")).parent / "jobs.sqlite"
        return Path(artifacts.default_data_dir()) / "jobs.sqlite"


class RuntimeSeries:
    """A Prometheus collector of the in-process runtimes' series, each labelled with its base model.

    With no runtime port of its own in single-node mode, the runtimes' metrics (ops, batches,
    tokens/s, queue depth, adapters) are scraped from the gateway's `/metrics`; the label keeps the
    series of two served models apart under one metric name.
    """

    def __init__(self, states: dict[str, Any]) -> None:
        #: base model -> the runtime's `RuntimeState` (its `metrics` is replaced when the model loads)
        self._states = states

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for base_model, state in self._states.items():
            state.metrics.refresh()
            for family in state.metrics.registry.collect():
                out = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                            family.unit))
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "base_model": base_model}, sample.value,
                                   sample.timestamp, sample.exemplar)
        yield from merged.values()


def runtime_name(index: int) -> str:
    """Host name of the index-th in-process runtime (DNS-safe, no dots: it is also the futures' pod)."""
    return f"runtime-{index}"


def default_runtime_app(settings: RuntimeSettings) -> Any:
    """The runtime's own ASGI app, whose lifespan loads the model and runs the executor's model thread.

    Imported here: only single-node wiring may import the runtime. The model loads in a worker
    thread so the event loop stays responsive, and before `loraplane serve` reports it is ready.
    """
    from loraplane.runtime import api as runtime_api
    from loraplane.runtime.engine import Engine
    from loraplane.runtime.executor import Executor

    state = runtime_api.RuntimeState(settings=settings)
    app = runtime_api.create_app(state)
    app.state.runtime_state = state  # its metrics join the gateway's /metrics (RuntimeSeries)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # serve's log is its one ready line, not a loading bar
        try:
            engine = await asyncio.to_thread(
                Engine, str(settings.model_path), base_model=settings.base_model, device=settings.device,
                dtype=settings.dtype, threads=settings.threads,
            )
        except errors.LoraplaneError:
            raise
        except Exception as exc:  # a broken model folder: say which model, in one line
            raise errors.ServerError(f"cannot load base model {settings.base_model!r} from "
                                     f"{settings.model_path}: {type(exc).__name__}: {exc}") from exc
        executor = Executor(engine, settings)
        state.attach(executor)
        try:
            yield
        finally:
            await asyncio.to_thread(executor.close)

    app.router.lifespan_context = lifespan
    return app


def build_app(config: ServeConfig, *, runtime_app: Callable[[RuntimeSettings], Any] = default_runtime_app) -> FastAPI:
    """The whole single-node server as one ASGI app; runtimes start and stop with its lifespan."""
    if not config.models:
        raise ValueError("no model to serve: pass --model NAME=PATH (or LORAPLANE_MODELS)")
    store = artifact_store.ArtifactStore(config.store_url)
    served, apps = [], {}
    for i, (name, path) in enumerate(config.models.items()):
        host = runtime_name(i)
        settings = config.runtime.model_copy(update={"base_model": name, "model_path": path})
        apps[host] = runtime_app(settings)
        served.append(ServedRuntime(pod=host, address=f"http://{host}", base_model=name))
    transport = RuntimeTransport(apps)
    quota_table = quotas.QuotaTable.build(config.gateway.tenant_defaults, config.gateway.tenant_quotas,
                                          config.keys.overrides)
    control_plane = EmbeddedControlPlane(SqliteJobStore(config.jobs_path()), served, store_url=store.url,
                                         settings=config.control, quotas=quota_table, transport=transport)
    gateway = Gateway(
        control_plane=control_plane,
        runtimes=Runtimes(transport, timeout_s=config.gateway.long_poll_s + 60),
        store=store,
        models=list(config.models),
        long_poll_s=config.gateway.long_poll_s, job_start_timeout_s=config.gateway.job_start_timeout_s,
        max_request_bytes=config.gateway.max_request_bytes,
        sample_caps=limits.caps_from(config.gateway),
        quotas=quota_table,
    )
    app = create_app(gateway, config.keys, settings=config.gateway)
    states = {name: getattr(getattr(runtime, "state", None), "runtime_state", None)
              for name, runtime in zip(config.models, apps.values(), strict=True)}
    app.state.metrics_registry.register(RuntimeSeries({k: v for k, v in states.items() if v is not None}))
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for runtime in apps.values():
                router = getattr(runtime, "router", None)
                if router is not None and getattr(router, "lifespan_context", None) is not None:
                    await stack.enter_async_context(router.lifespan_context(runtime))
            async with inner(a):  # closes the control plane on the way out
                await control_plane.start()
                yield

    app.router.lifespan_context = lifespan
    return app
