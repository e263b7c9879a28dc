"""The runtime's side of the request id: taken from `X-Request-ID`, kept for the call and its op.

Callers: `runtime.api.create_app` installs `RequestLog` outermost. The gateway sends its request
id with every call (`core.runtime_client`); this middleware puts it in `core.logs.request_id`, so
the executor records it on the op (`ops.Op.origin`) and the lines about that op, also those written
on the model thread, carry it. Answers of 400 and above are logged at INFO with their reason,
successful calls at DEBUG; headers and query strings are never logged.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplane.core import logs

log = logging.getLogger("loraplane.runtime.requests")


class RequestLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(logs.HEADER.encode())
        token = logs.request_id.set(logs.accept_request_id(given.decode(errors="replace")) if given else None)
        start = time.perf_counter()
        answer = logs.ResponseWatch()

        async def watched_send(message: Message) -> None:
            answer.observe(message)
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            ms = (time.perf_counter() - start) * 1000
            if answer.status >= 400:
                log.info("runtime answered %d to %s %s in %.1f ms: %s", answer.status, scope.get("method"),
                         scope.get("path"), ms, answer.reason())
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("runtime answered %d to %s %s in %.1f ms", answer.status, scope.get("method"),
                          scope.get("path"), ms)
            logs.request_id.reset(token)
