"""The runtime API calls the operator makes (docs/runtime-api.md): health, adapters, training.

Callers: `runtimes` (health polls) and `reconciling` (dispatch, follow, suspend, delete).

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
from typing import Any

import httpx

from loraplane.core.models.v1alpha1.lorajob import LoRAConfig


class RuntimeUnreachable(Exception):
    """The runtime did not answer (connection refused, timeout)."""


class RuntimeRejected(Exception):
    """The runtime answered with an error status."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"runtime answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class RuntimeCalls:
    """One shared HTTP client for every runtime the operator talks to."""

    def __init__(self, *, timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise RuntimeUnreachable(f"{method} {url}: {exc.__class__.__name__}: {exc}") from exc
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:500]}
        if response.status_code >= 400:
            detail = body.get("detail") if isinstance(body, dict) else str(body)
            raise RuntimeRejected(response.status_code, str(detail))
        return response.status_code, body

    async def readyz(self, address: str) -> dict[str, Any] | None:
        """The RuntimeHealth body (also when not ready, 503), or None when unreachable."""
        try:
            response = await self._http.get(f"{address}/readyz", timeout=5.0)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def adapter(self, address: str, adapter_id: str) -> dict[str, Any] | None:
        """AdapterInfo, or None when the runtime does not hold the adapter."""
        try:
            return (await self._call("GET", f"{address}/v1/adapters/{adapter_id}"))[1]
        except RuntimeRejected as exc:
            if exc.status_code == 404:
                return None
            raise

    async def create_adapter(self, address: str, adapter_id: str, lora: LoRAConfig) -> dict[str, Any]:
        body = {"adapter_id": adapter_id, **lora.model_dump(exclude_none=True), "expect_seq": 1}
        return (await self._call("POST", f"{address}/v1/adapters", json=body))[1]

    async def load_adapter(
        self, address: str, adapter_id: str, source: str, *, optimizer: bool, expect_seq: int | None
    ) -> dict[str, Any]:
        body = {"source": source, "optimizer": optimizer, "expect_seq": expect_seq}
        return (await self._call("POST", f"{address}/v1/adapters/{adapter_id}/load", json=body))[1]

    async def offload_adapter(self, address: str, adapter_id: str) -> dict[str, Any]:
        return (await self._call("POST", f"{address}/v1/adapters/{adapter_id}/offload"))[1]

    async def delete_adapter(self, address: str, adapter_id: str) -> bool:
        """True when deleted, False when the runtime did not hold it."""
        try:
            await self._call("DELETE", f"{address}/v1/adapters/{adapter_id}")
        except RuntimeRejected as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    async def save_state(
        self, address: str, adapter_id: str, dest: str, *, wait: float = 60.0
    ) -> dict[str, Any]:
        """Save weights and optimizer state to `dest` and wait for the result."""
        op = {"seq_id": None, "op": "save_state", "dest": dest, "optimizer": True}
        _, accepted = await self._call("POST", f"{address}/v1/adapters/{adapter_id}/ops", json=op)
        return await self._result(address, accepted["request_id"], wait)

    async def _result(self, address: str, request_id: str, wait: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            left = max(0.0, deadline - loop.time())
            _, body = await self._call(
                "GET",
                f"{address}/v1/results/{request_id}",
                params={"wait": min(left, 30.0)},
                timeout=left + 10,
            )
            if body.get("status") == "done":
                return dict(body.get("result") or {})
            if body.get("status") == "failed":
                raise RuntimeRejected(500, str(body.get("error")))
            if loop.time() >= deadline:
                raise RuntimeUnreachable(f"no result for {request_id} within {wait}s")

    async def train_status(self, address: str, adapter_id: str) -> dict[str, Any] | None:
        """TrainStatus, or None when no run was started for the adapter."""
        try:
            return (await self._call("GET", f"{address}/v1/adapters/{adapter_id}/train"))[1]
        except RuntimeRejected as exc:
            if exc.status_code == 404:
                return None
            raise

    async def start_training(self, address: str, adapter_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return (await self._call("POST", f"{address}/v1/adapters/{adapter_id}/train", json=body))[1]
