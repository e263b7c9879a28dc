"""The gateway's side of the runtime's internal API (docs/runtime-api.md): per-step calls.

Callers: `gateway.Gateway` and `futures`. One pooled `httpx.AsyncClient` per runtime address;
`transport` lets single-node mode route these calls into the in-process runtime apps without a
socket. Calls go through `loraplane.clients.runtime.RuntimeClient`, which turns non-2xx answers
into `loraplane.core.errors`, so a runtime's 400 reaches the SDK as a 400 with its message.

Design notes
============
The forward_backward protobuf goes through as the raw bytes the SDK sent (decompressed): the
gateway neither parses nor re-encodes the batch, which keeps its added latency flat in batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from loraplane.clients.runtime import RuntimeClients
from loraplane.core import errors
from loraplane.core.runtime_ops import OpBody, SampleBody

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
    """`RuntimeClient`s of the runtimes, one per address, created on first use."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *, timeout_s: float = 30.0) -> None:
        self.client = RuntimeClients(transport, timeout=timeout_s)
        #: address -> /readyz body, for tokenizer ids and model paths
        self._health: dict[str, dict[str, Any]] = {}

    async def submit_forward_backward(self, address: str, adapter_id: str, body: bytes, *,
                                      sequences_url: str | None = None, tenant: str | None = None) -> str:
        return await self.client(address).submit_forward_backward(adapter_id, body, sequences_url=sequences_url,
                                                                  tenant=tenant)

    async def submit_op(self, address: str, adapter_id: str, op: OpBody) -> str:
        return await self.client(address).submit_op(adapter_id, op)

    async def submit_sample(self, address: str, body: SampleBody) -> str:
        return await self.client(address).submit_sample(body)

    async def result(self, address: str, request_id: str, *, wait_s: float, owner: str) -> Result:
        content_type, body = await self.client(address).result(request_id, wait=wait_s, owner=owner)
        if content_type == PROTOBUF and isinstance(body, bytes):
            return Result("proto", payload=body)
        if not isinstance(body, dict):
            raise errors.ServerError(f"runtime answered {content_type!r} for a result")
        status = body.get("status")
        if status == "pending":
            return Result("pending")
        if status == "failed":
            return Result("failed", error=str(body.get("error", "failed")), category=str(body.get("category", "server")))
        return Result("done", result=dict(body.get("result") or {}))

    async def load_adapter(self, address: str, adapter_id: str, source: str) -> dict[str, Any]:
        """Load a sampler snapshot as a read-only adapter (idempotent on the runtime)."""
        return await self.client(address).load_adapter(adapter_id, source, optimizer=False, expect_seq=None)

    async def health(self, address: str) -> dict[str, Any]:
        """The runtime's /readyz body, kept once ready (a runtime's model does not change)."""
        if address not in self._health:
            try:
                body = await self.client(address).readiness()
            except errors.LoraplaneError:
                return {}
            if body.get("ready"):
                self._health[address] = body
            return body
        return self._health[address]

    async def close(self) -> None:
        await self.client.close()
