"""The per-step fast lane: the few calls made on every training step skip the framework's routing.

Callers: the gateway (`api.app`: forward_backward, optim_step, retrieve_future) and the runtime
(`runtime.api`: an op's submission and its result). Each says which requests it takes (`pick`) and
how an error is answered, so that a call answered here gets the same JSON as the app's own handlers
would give it.

Design notes
============
FastAPI's routing, dependency resolution and body validation cost more than the whole work of a
per-step call at the gateway. The lane is pure ASGI: a request it picks goes straight to a handler
that takes the `Request` and returns a `Response`; every other request goes to the app unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from loraplane.core import errors

log = logging.getLogger(__name__)

#: A handler of the lane: the request in, the response out; raises LoraplaneError for an error answer.
Handler = Callable[[Request], Awaitable[Response]]


class FastLane:
    """Pure ASGI middleware: requests `pick(scope)` answers with a handler skip the app."""

    def __init__(self, app: Any, *, pick: Callable[[dict[str, Any]], Handler | None],
                 error_response: Callable[[errors.LoraplaneError], Response]) -> None:
        self.app = app
        self.pick = pick
        self.error_response = error_response

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        handler = self.pick(scope) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await handler(Request(scope, receive))
        except errors.LoraplaneError as exc:
            if exc.status_code >= 500:
                log.warning("%s: %s", type(exc).__name__, exc.message)
            response = self.error_response(exc)
        except Exception as exc:  # the same last resort as the apps' handlers: a JSON 500
            log.exception("unhandled error")
            response = self.error_response(errors.ServerError(f"internal error: {type(exc).__name__}: {exc}"))
        await response(scope, receive, send)
