"""The gateway's access log: one line per request, and the request id in a response header.

Callers: `app.create_app` installs `AccessLog` outermost, so every answer is logged, a 413 of the
body limit and a 401 included.

Each line holds the request id (`X-Request-ID`, the caller's if it sent a plain one, else new),
the tenant's name (never the key), method, route template, status, latency and, when the call
names one, the model id; a 4xx/5xx line adds the reason from the error body. Lines are at INFO,
so `--log-level info` shows them (`warning` hides them). Headers and query strings are never
logged: API keys and the signatures of export URLs stay out of the logs.

The request id is put in `core.logs.request_id` for the whole call, so the runtime client sends it
on (`X-Request-ID`) and the runtime's lines about the same op carry it too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from loraplane.api import codecs, ids
from loraplane.api.guards import TENANT_KEY
from loraplane.asgi.request_scope import RequestScoped, ResponseWatch
from loraplane.core import errors, logs

log = logging.getLogger("loraplane.access")

#: Request bytes kept to find a model id (it sits near the start of every body that has one).
#: the status logged for a request cancelled before it was answered (nginx's "client closed")
CANCELLED = 499
_PEEK_BYTES = 4096
#: Error-body bytes kept to log the reason.
_ERROR_BYTES = 4096
_MODEL_ID = re.compile(rb'"model_id"\s*:\s*"([^"\\]{1,200})"')
_REQUEST_ID = re.compile(rb'"request_id"\s*:\s*"([^"\\]{1,512})"')
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def model_id_of(path: str, content_type: str, body: bytes, path_params: dict[str, Any]) -> str | None:
    """The model id a request names: in its JSON body, its protobuf body, its future, or its path. Pure."""
    if content_type.startswith("application/x-protobuf"):
        try:
            return codecs.routing_fields(body)[0] or None
        except errors.LoraplaneError:
            return None
    m = _MODEL_ID.search(body)
    if m:
        return m.group(1).decode(errors="replace")
    m = _REQUEST_ID.search(body) if path.endswith("/retrieve_future") else None
    if m:
        try:
            ref = ids.parse_request_id(m.group(1).decode(errors="replace"))
            return ref.tinker_id if ref.kind == "train" else None
        except errors.LoraplaneError:
            return None
    run = path_params.get("run_id")
    return str(run) if run and ":train:" in str(run) else None


def fields_of(*, request_id: str, tenant: str | None, method: str, route: str, status: int, latency_s: float,
              model_id: str | None, reason: str | None) -> dict[str, Any]:
    """The access line's fields, in order; absent ones left out. Pure."""
    out: dict[str, Any] = {"request_id": request_id, "tenant": tenant or "-", "method": method, "route": route,
                           "status": status, "latency_ms": round(latency_s * 1000, 1)}
    if model_id:
        out["model_id"] = model_id
    if reason:
        out["reason"] = reason
    return out


def text_of(fields: dict[str, Any]) -> str:
    """`key=value` pairs; values with spaces or quotes are JSON-quoted. Pure."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        quoted = json.dumps(text) if (not text or _NEEDS_QUOTES.search(text)) else text
        parts.append(f"{key}={quoted}")
    return "access " + " ".join(parts)


class AccessLog(RequestScoped):
    """Pure ASGI middleware; see the module notes."""

    error_bytes = _ERROR_BYTES

    async def serve(self, scope: Scope, receive: Receive, send: Send, rid: str | None,
                    answer: ResponseWatch) -> None:
        assert rid is not None  # the gateway mints one for every call
        peek = bytearray()
        scope["loraplane.peek"] = peek  # the start of the body, for the model id of the log line

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(peek) < _PEEK_BYTES:
                peek.extend(message.get("body", b"")[: _PEEK_BYTES - len(peek)])
            return message

        async def watched_send(message: Message) -> None:
            answer.observe(message)
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (logs.HEADER.encode(), rid.encode())]}
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except asyncio.CancelledError:
            # Ended from outside (the server stopping, the client gone) before an answer: logged
            # as nginx does, 499, not as a fault of ours.
            if not answer.started:
                answer.status = CANCELLED
            raise

    def done(self, scope: Scope, headers: dict[bytes, bytes], rid: str | None, answer: ResponseWatch,
             elapsed_s: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        status, path = answer.status, scope.get("path", "")
        route = getattr(scope.get("route"), "path", None)
        if route and not route.startswith("/api/") and path.startswith("/api/v1/"):
            route = "/api/v1" + route  # the per-step lane puts the router's unprefixed route in the scope
        body = bytes(scope.get("loraplane.peek") or b"")
        fields = fields_of(
            request_id=rid, tenant=_tenant(scope, headers), method=scope.get("method", "-"),
            route=route or path, status=status, latency_s=elapsed_s,
            model_id=model_id_of(path, headers.get(b"content-type", b"").decode(errors="replace"), body,
                                 scope.get("path_params") or {}),
            reason=logs.reason_of(bytes(answer.error_body)) if status >= 400 else None,
        )
        level = logging.WARNING if status >= 500 and status != CANCELLED else logging.INFO
        log.log(level, text_of(fields), extra={"fields": fields, "request_id": rid})


def _tenant(scope: Scope, headers: dict[bytes, bytes]) -> str | None:
    """The caller's tenant name, as the front door found it (`guards.Authenticate`); else from the
    key table; None when the key is missing or unknown."""
    if scope.get(TENANT_KEY):
        return str(scope[TENANT_KEY])
    key = headers.get(b"x-api-key")
    app = scope.get("app")
    keys = getattr(getattr(app, "state", None), "keys", None)
    if not key or keys is None:
        return None
    try:
        return keys.tenant_for(key.decode(errors="replace"))
    except errors.LoraplaneError:
        return None
