"""The one client of the runtime's internal API (docs/runtime-api.md).

Callers: the gateway (per-step data plane: it forwards the SDK's protobuf bytes unchanged), the
operator and the embedded control plane (adapter lifecycle, declarative training). In single-node
mode the runtime's ASGI app is mounted in process: pass `transport=httpx.ASGITransport(app)`.

Request bodies are the models of `loraplane.core.runtime_ops`, which the runtime parses too.
Errors come back as the `loraplane.core.errors` class of their status code (400 InvalidInput with
its `field`, 404 NotFound, 409 Conflict, 413 PayloadTooLarge, 503 CapacityError), so callers map
them without looking at HTTP; a runtime that cannot be reached raises `RuntimeUnavailable`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from loraplane.core import errors, logs
from loraplane.core.params import LoraConfig
from loraplane.core.runtime_ops import CreateAdapterBody, LoadAdapterBody, OpBody, SampleBody, TrainBody

PROTOBUF = "application/x-protobuf"



class RuntimeUnavailable(errors.ServerError):
    """The runtime did not answer (connection refused, reset, or timed out); retry or reschedule."""

    status_code = 503


def error_for(status_code: int, body: Any) -> errors.LoraplaneError:
    """The exception of an error answer. No side effects; called by `RuntimeClient` on every 4xx/5xx."""
    detail = body.get("detail") if isinstance(body, dict) else None
    field = body.get("field") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        detail = f"runtime answered HTTP {status_code}"
    cls = errors.class_for_status(status_code)
    return cls(detail, field=field if isinstance(field, str) else None)


#: Header of a forward_backward naming the store folder of its session's recorded sequences.
SEQUENCES_HEADER = "x-loraplane-sequences"
#: whose adapter a submitted op is for: the runtime shares its passes between tenants by it
TENANT_HEADER = "x-loraplane-tenant"

def _id(value: str) -> str:
    return quote(value, safe=":")


def _json(body: BaseModel) -> dict[str, Any]:
    """A request body as the runtime reads it: snake_case, the fields the caller set (an explicit
    None, such as `expect_seq=None`, means something)."""
    return body.model_dump(mode="json", exclude_unset=True)


class RuntimeClient:
    """Async client of one runtime; cheap to keep open, one per runtime address.

    Args:
        base_url: the runtime's URL, e.g. "http://10.0.0.7:8001".
        transport: an httpx transport (an `ASGITransport` in single-node mode and tests).
        timeout: seconds for connect/write/pool and for reads that do not long-poll.
    """

    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._timeouts = httpx.Timeout(timeout).as_dict()
        # Requests go straight to the transport (pooled connections, or the in-process app), not
        # through `httpx.AsyncClient`: its cookie, auth, redirect and URL-merging machinery cost
        # more than the in-process runtime call itself, and the runtime's API uses none of it.
        self._own_transport = transport is None
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def aclose(self) -> None:
        if self._own_transport:
            await self._transport.aclose()

    async def __aenter__(self) -> RuntimeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- health ----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """`GET /healthz`; raises when the model thread is gone."""
        return (await self._request("GET", "/healthz")).json()

    async def readiness(self) -> dict[str, Any]:
        """`GET /readyz` as `RuntimeHealth`, also while not ready (its `ready` is then false)."""
        response = await self._request("GET", "/readyz", ok=(200, 503))
        return response.json()

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics")).text

    # ---- adapters --------------------------------------------------------------------------

    async def list_adapters(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/v1/adapters")).json()["adapters"]

    async def create_adapter(self, adapter_id: str, lora: LoraConfig | None = None, *,
                             expect_seq: int | None = 1) -> dict[str, Any]:
        """Create (or, with the same config, find) an adapter; Conflict when it exists with another."""
        body = CreateAdapterBody(adapter_id=adapter_id, expect_seq=expect_seq,
                                 **(lora or LoraConfig()).model_dump())
        return (await self._request("POST", "/v1/adapters", json=_json(body))).json()

    async def load_adapter(self, adapter_id: str, source: str, *, optimizer: bool = True,
                           expect_seq: int | None = 1) -> dict[str, Any]:
        """Load a saved state (creating the adapter when missing); `expect_seq=None` learns the seq."""
        body = LoadAdapterBody(source=source, optimizer=optimizer, expect_seq=expect_seq)
        return (await self._request("POST", f"/v1/adapters/{_id(adapter_id)}/load", json=_json(body))).json()

    async def get_adapter(self, adapter_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/adapters/{_id(adapter_id)}")).json()

    async def offload_adapter(self, adapter_id: str) -> dict[str, Any]:
        return (await self._request("POST", f"/v1/adapters/{_id(adapter_id)}/offload")).json()

    async def delete_adapter(self, adapter_id: str) -> None:
        await self._request("DELETE", f"/v1/adapters/{_id(adapter_id)}", ok=(204,))

    # ---- ops -------------------------------------------------------------------------------

    async def submit_forward_backward(self, adapter_id: str, proto_bytes: bytes, *,
                                      sequences_url: str | None = None, tenant: str | None = None) -> str:
        """Forward a `ForwardBackwardRequest` (plain or zstd) unchanged; returns the request id.

        `sequences_url` is where the session's recorded sequences are kept (stable_reinforce);
        `tenant` whose adapter it is (fair share).
        """
        headers = {"content-type": PROTOBUF}
        if sequences_url:
            headers[SEQUENCES_HEADER] = sequences_url
        if tenant:
            headers[TENANT_HEADER] = tenant
        response = await self._request("POST", f"/v1/adapters/{_id(adapter_id)}/ops", content=proto_bytes,
                                       headers=headers, ok=(202,))
        return response.json()["request_id"]

    async def submit_op(self, adapter_id: str, op: OpBody) -> str:
        """Submit a JSON op (`optim_step`, `save_state`, ...); returns the request id."""
        response = await self._request("POST", f"/v1/adapters/{_id(adapter_id)}/ops", json=_json(op), ok=(202,))
        return response.json()["request_id"]

    async def submit_sample(self, body: SampleBody) -> str:
        response = await self._request("POST", "/v1/sample", json=_json(body), ok=(202,))
        return response.json()["request_id"]

    async def result(self, request_id: str, wait: float = 0.0, owner: str | None = None) -> tuple[str, bytes | dict[str, Any]]:
        """(content type, body) of a result: protobuf bytes, or the JSON status dict.

        `owner` (an adapter id, or the `owner` a sample was submitted with) makes the runtime answer
        404 for a result of anyone else.

        JSON bodies are `{"status": "pending"}`, `{"status": "done", "result"}` or
        `{"status": "failed", "error", "category"}`. `wait` long-polls up to 60 s.
        """
        timeouts = dict(self._timeouts, read=self._timeout + wait)
        query = f"wait={float(wait)!r}" + (f"&owner={quote(owner, safe='')}" if owner is not None else "")
        response = await self._request("GET", f"/v1/results/{_id(request_id)}?{query}", timeouts=timeouts)
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if content_type == PROTOBUF:
            return content_type, response.content
        return content_type, response.json()

    # ---- declarative training --------------------------------------------------------------

    async def start_training(self, adapter_id: str, body: TrainBody) -> dict[str, Any]:
        """Start (or find the same running) declarative run; returns its TrainStatus."""
        path = f"/v1/adapters/{_id(adapter_id)}/train"
        return (await self._request("POST", path, json=_json(body), ok=(200, 202))).json()

    async def training_status(self, adapter_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/adapters/{_id(adapter_id)}/train")).json()

    # ---- transport -------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201),
                       timeouts: dict[str, float | None] | None = None, **kwargs: Any) -> httpx.Response:
        """One call: `kwargs` are `httpx.Request`'s (json, content, headers); the body is read in full."""
        rid = logs.request_id.get()
        if rid is not None:  # the gateway's request id, so the runtime's lines about this op carry it
            kwargs["headers"] = {**(kwargs.get("headers") or {}), logs.HEADER: rid}
        request = httpx.Request(method, self.base_url + path, extensions={"timeout": timeouts or self._timeouts},
                                **kwargs)
        try:
            response = await self._transport.handle_async_request(request)
            response.request = request
            try:
                await response.aread()
            except BaseException:
                await response.aclose()  # hand the connection back (or drop it) on a broken read
                raise
        except httpx.TransportError as exc:
            raise RuntimeUnavailable(f"runtime {self.base_url} unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code in ok:
            return response
        try:
            body = response.json()
        except ValueError:
            body = None
        raise error_for(response.status_code, body)


class RuntimeClients:
    """One open `RuntimeClient` per runtime address, made on first use: the one cache of them, which
    the gateway's data plane (`api.dataplane.Runtimes`), the control plane's runtime calls
    (`control.runtime_calls.RuntimeCalls`) and the gateway's runtime probe each hold one of."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *, timeout: float = 30.0) -> None:
        self._transport = transport
        self._timeout = timeout
        self._clients: dict[str, RuntimeClient] = {}

    def __call__(self, address: str) -> RuntimeClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = RuntimeClient(address, transport=self._transport,
                                                            timeout=self._timeout)
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
