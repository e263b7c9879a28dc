"""The frame of every call through the gateway and the runtime: its request id, its answer watched.

Callers: the gateway's access log (`api.access_log.AccessLog`) and the runtime's request log
(`runtime.request_log.RequestLog`) subclass `RequestScoped`. The request id lives in
`core.logs.request_id` while the call runs, so every log line about it carries the id.
"""

from __future__ import annotations

import time
from typing import Any

from loraplane.core.logs import HEADER, accept_request_id, reason_of, request_id


class ResponseWatch:
    """What an HTTP answer said, seen through its ASGI messages: the status, whether it started, and
    the start of an error body (the log line's reason). Used by the gateway's access log and the
    runtime's request log; it only reads the messages."""

    def __init__(self, limit: int = 2048) -> None:
        self.status = 500  #: until the answer starts, a request that ends is a fault
        self.started = False
        self.error_body = bytearray()
        self._limit = limit

    def observe(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = int(message["status"])
        elif message["type"] == "http.response.body" and self.status >= 400 and len(self.error_body) < self._limit:
            self.error_body.extend(message.get("body", b"")[: self._limit - len(self.error_body)])

    def reason(self) -> str:
        return reason_of(bytes(self.error_body))


class RequestScoped:
    """Pure ASGI middleware frame: the call's request id in `request_id` while it runs, its answer
    watched, and `done` called once it ends, however it ends.

    Subclasses (the gateway's access log, the runtime's request log) say what to do with the
    answer (`done`) and may watch more of the exchange (`serve`). `mint` says whether a call
    without an `X-Request-ID` gets a new id (the gateway, where ids start) or none (the runtime).
    """

    mint = True
    #: how much of an error body to keep for the log line's reason
    error_bytes = 2048

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(HEADER.encode())
        text = given.decode(errors="replace") if given else None
        rid = accept_request_id(text) if text or self.mint else None
        token = request_id.set(rid)
        answer = ResponseWatch(self.error_bytes)
        start = time.perf_counter()
        try:
            await self.serve(scope, receive, send, rid, answer)
        finally:
            request_id.reset(token)
            self.done(scope, headers, rid, answer, time.perf_counter() - start)

    async def serve(self, scope: dict[str, Any], receive: Any, send: Any, rid: str | None,
                    answer: ResponseWatch) -> None:
        async def watched_send(message: dict[str, Any]) -> None:
            answer.observe(message)
            await send(message)

        await self.app(scope, receive, watched_send)

    def done(self, scope: dict[str, Any], headers: dict[bytes, bytes], rid: str | None, answer: ResponseWatch,
             elapsed_s: float) -> None:
        """The call ended (answered, failed or cancelled) after `elapsed_s` seconds."""
