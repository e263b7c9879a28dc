"""The gateway's side of the runtime's internal API (docs/runtime-api.md): per-step calls.

Callers: `gateway.Gateway` and `futures`. One pooled `httpx.AsyncClient` per runtime address;
`transport` lets single-node mode route these calls into the in-process runtime apps without a
socket. Non-2xx answers become `loraplane.core.errors` through `errors.from_runtime_response`, so a
runtime's 400 reaches the SDK as a 400 with the runtime's message.

Design notes
============
The forward_backward protobuf goes through as the raw bytes the SDK sent (decompressed): the
gateway neither parses nor re-encodes the batch, which keeps its added latency flat in batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from loraplane.api import errors as api_errors
from loraplane.core import errors

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Result:
    """A runtime future's state: "pending", "proto" (payload bytes), "done" (result dict) or "failed"."""

    state: str
    payload: bytes = b""
    result: dict[str, Any] | None = None
    error: str = ""
    category: str = "server"


class Runtimes:
    """HTTP clients of the runtimes, one per address."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *, timeout_s: float = 90.0) -> None:
        self._transport = transport
        self._timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._clients: dict[str, httpx.AsyncClient] = {}
        #: address -> /readyz body, for tokenizer ids and model paths
        self._health: dict[str, dict[str, Any]] = {}

    def client(self, address: str) -> httpx.AsyncClient:
        c = self._clients.get(address)
        if c is None:
            c = httpx.AsyncClient(
                base_url=address, transport=self._transport, timeout=self._timeout,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
            self._clients[address] = c
        return c

    async def _call(self, address: str, method: str, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = await self.client(address).request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise errors.CapacityError(f"{what}: runtime at {address} unreachable ({type(exc).__name__})") from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
            raise api_errors.from_runtime_response(resp.status_code, body, what=what)
        return resp

    async def submit_forward_backward(self, address: str, adapter_id: str, body: bytes) -> str:
        resp = await self._call(
            address, "POST", f"/v1/adapters/{adapter_id}/ops", what="forward_backward",
            content=body, headers={"content-type": PROTOBUF},
        )
        return str(resp.json()["request_id"])

    async def submit_op(self, address: str, adapter_id: str, op: dict[str, Any]) -> str:
        resp = await self._call(address, "POST", f"/v1/adapters/{adapter_id}/ops", what=str(op.get("op")), json=op)
        return str(resp.json()["request_id"])

    async def submit_sample(self, address: str, body: dict[str, Any]) -> str:
        resp = await self._call(address, "POST", "/v1/sample", what="sample", json=body)
        return str(resp.json()["request_id"])

    async def result(self, address: str, request_id: str, *, wait_s: float) -> Result:
        resp = await self._call(
            address, "GET", f"/v1/results/{request_id}", what="retrieve_future", params={"wait": f"{wait_s:g}"}
        )
        if PROTOBUF in resp.headers.get("content-type", ""):
            return Result("proto", payload=resp.content)
        body = resp.json()
        status = body.get("status")
        if status == "pending":
            return Result("pending")
        if status == "failed":
            return Result("failed", error=str(body.get("error", "failed")), category=str(body.get("category", "server")))
        return Result("done", result=dict(body.get("result") or {}))

    async def load_adapter(self, address: str, adapter_id: str, source: str) -> dict[str, Any]:
        """Load a sampler snapshot as a read-only adapter (idempotent on the runtime)."""
        resp = await self._call(
            address, "POST", f"/v1/adapters/{adapter_id}/load", what="load sampler weights",
            json={"source": source, "optimizer": False, "expect_seq": None},
        )
        return dict(resp.json())

    async def health(self, address: str) -> dict[str, Any]:
        """The runtime's /readyz body, fetched once per address (its model does not change)."""
        if address not in self._health:
            resp = await self.client(address).get("/readyz")
            body = resp.json()
            if not isinstance(body, dict):
                raise errors.ServerError(f"runtime at {address} answered /readyz with {body!r}")
            if body.get("ready"):
                self._health[address] = body
            return body
        return self._health[address]

    async def close(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()
