"""The runtime API calls the operator makes (docs/runtime-api.md): health, adapters, training.

Callers: `runtimes` (health polls) and `reconciling` (dispatch, follow, suspend, delete). The HTTP
is `loraplane.clients.runtime.RuntimeClient`, one per runtime address, kept open.

Design notes
============
The operator needs a few lifecycle calls and must tell three outcomes apart: the runtime
answered (a dict), the runtime refused (`RuntimeRejected`, carrying the status code and the
runtime's JSON error, a reason to fail the attempt), and the runtime could not be reached
(`RuntimeUnreachable`, a reason to wait for the pod to be declared lost). Health polls swallow
errors into None, since an unreachable runtime is simply not ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from loraplane.clients.runtime import RuntimeClients, RuntimeUnavailable
from loraplane.core import errors
from loraplane.core.params import LoraConfig
from loraplane.core.runtime_ops import OpBody, OpKind, TrainBody

T = TypeVar("T")


class RuntimeUnreachable(Exception):
    """The runtime did not answer (connection refused, timeout)."""


class RuntimeRejected(Exception):
    """The runtime answered with an error status."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"runtime answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class RuntimeCalls:
    """The operator's view of every runtime: one `RuntimeClient` per address, errors sorted in two."""

    def __init__(self, *, timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.client = RuntimeClients(transport, timeout=timeout)

    async def close(self) -> None:
        await self.client.close()

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            return await make()
        except RuntimeUnavailable as exc:
            raise RuntimeUnreachable(exc.message) from exc
        except errors.LoraplaneError as exc:
            raise RuntimeRejected(exc.status_code, exc.message) from exc

    async def _unless_absent(self, make: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """(True, the answer), or (False, None) when the runtime answers 404 (it holds no such thing)."""
        try:
            return True, await self._call(make)
        except RuntimeRejected as exc:
            if exc.status_code == 404:
                return False, None
            raise

    async def readyz(self, address: str) -> dict[str, Any] | None:
        """The RuntimeHealth body (also when not ready), or None when unreachable or garbled."""
        try:
            body = await self.client(address).readiness()
        except (errors.LoraplaneError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def adapters(self, address: str) -> list[dict[str, Any]] | None:
        """Every AdapterInfo the runtime holds, or None when it cannot be listed now."""
        try:
            return await self.client(address).list_adapters()
        except (errors.LoraplaneError, ValueError, KeyError):
            return None

    async def adapter(self, address: str, adapter_id: str) -> dict[str, Any] | None:
        """AdapterInfo, or None when the runtime does not hold the adapter."""
        return (await self._unless_absent(lambda: self.client(address).get_adapter(adapter_id)))[1]

    async def create_adapter(self, address: str, adapter_id: str, lora: LoraConfig) -> dict[str, Any]:
        return await self._call(lambda: self.client(address).create_adapter(adapter_id, lora, expect_seq=1))

    async def load_adapter(
        self, address: str, adapter_id: str, source: str, *, optimizer: bool, expect_seq: int | None
    ) -> dict[str, Any]:
        return await self._call(
            lambda: self.client(address).load_adapter(
                adapter_id, source, optimizer=optimizer, expect_seq=expect_seq
            )
        )

    async def offload_adapter(self, address: str, adapter_id: str) -> dict[str, Any]:
        return await self._call(lambda: self.client(address).offload_adapter(adapter_id))

    async def delete_adapter(self, address: str, adapter_id: str) -> bool:
        """True when deleted, False when the runtime did not hold it."""
        return (await self._unless_absent(lambda: self.client(address).delete_adapter(adapter_id)))[0]

    async def save_state(
        self, address: str, adapter_id: str, dest: str, *, wait: float = 60.0
    ) -> dict[str, Any]:
        """Save weights and optimizer state to `dest` and wait for the result."""
        op = OpBody(seq_id=None, op=OpKind.SAVE_STATE, dest=dest, optimizer=True)
        request_id = await self._call(lambda: self.client(address).submit_op(adapter_id, op))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            hold = min(max(0.0, deadline - loop.time()), 30.0)
            _, body = await self._call(lambda h=hold: self.client(address).result(request_id, wait=h))
            status = body.get("status") if isinstance(body, dict) else None
            if status == "done":
                return dict(body.get("result") or {})  # type: ignore[union-attr]
            if status == "failed":
                raise RuntimeRejected(500, str(body.get("error")))  # type: ignore[union-attr]
            if loop.time() >= deadline:
                raise RuntimeUnreachable(f"no result for {request_id} within {wait}s")

    async def train_status(self, address: str, adapter_id: str) -> dict[str, Any] | None:
        """TrainStatus, or None when no run was started for the adapter."""
        return (await self._unless_absent(lambda: self.client(address).training_status(adapter_id)))[1]

    async def start_training(self, address: str, adapter_id: str, body: TrainBody) -> dict[str, Any]:
        return await self._call(lambda: self.client(address).start_training(adapter_id, body))
