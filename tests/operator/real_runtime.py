"""A real runtime (loraplane.runtime's API, engine and executor) with the tiny model, served by
uvicorn in a thread on 127.0.0.1, for the operator's end-to-end tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from loraplane.core.settings import RuntimeSettings


def runtime_app(model_dir: Path, base_model: str) -> Any:
    """The runtime's ASGI app; its lifespan loads the model and stops the executor."""
    from loraplane.runtime import api as runtime_api
    from loraplane.runtime.engine import Engine
    from loraplane.runtime.executor import Executor

    settings = RuntimeSettings(base_model=base_model, model_path=str(model_dir), device="cpu", threads=1)
    state = runtime_api.RuntimeState(settings=settings)
    app = runtime_api.create_app(state)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        engine = await asyncio.to_thread(
            Engine, str(model_dir), base_model=base_model, device="cpu", dtype="float32", threads=1
        )
        executor = Executor(engine, settings)
        state.attach(executor)
        try:
            yield
        finally:
            await asyncio.to_thread(executor.close, 5.0)

    app.router.lifespan_context = lifespan
    return app


class RealRuntime:
    """One runtime on a loopback port (a free one unless given); `stop()` kills it (connections
    refused afterwards). `host` may be any address of 127.0.0.0/8: one per runtime, as pod IPs."""

    def __init__(self, model_dir: Path, base_model: str = "tiny", *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._sock = socket.socket()
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(runtime_app(model_dir, base_model), log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> RealRuntime:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("runtime did not become ready")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=5.0)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()
