"""The one place where errors become HTTP answers.

Callers: `app.create_app` installs `install(app)`. Runtime answers arrive as the same classes
(`loraplane.clients.runtime` maps them), so a runtime's 400 leaves the gateway as a 400.

Every error answer has a JSON body `{"detail", "error", "category", "field"?}`: the SDK treats a
400 with an empty body as a proxy glitch and retries it forever (tinker-protocol surprise 10), and a
person reading a log wants the field's name. The classes and their codes are `loraplane.core.errors`.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraplane.core import errors

log = logging.getLogger(__name__)



def response_for(exc: errors.LoraplaneError) -> JSONResponse:
    """The JSON answer of `exc`. User errors and store failures say `x-should-retry: false`: the SDK
    retries other 4xx/5xx answers, and a full or read-only store will not heal in a retry's time.
    Rate and queue limits carry `Retry-After`, which the SDK honours."""
    headers: dict[str, str] = {}
    if isinstance(exc, errors.UserError | errors.StoreUnavailable):
        headers["x-should-retry"] = "false"
    if isinstance(exc, errors.TooManyRequests):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
        headers["retry-after-ms"] = str(max(1, math.ceil(exc.retry_after_s * 1000)))
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers or None)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(errors.LoraplaneError)
    async def _loraplane(_: Request, exc: errors.LoraplaneError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return response_for(errors.invalid_input(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = errors.class_for_status(exc.status_code)
        # FastAPI's own 400 is a body it could not parse (too deep, a number too long, ...).
        err = cls(str(exc.detail), field="body" if exc.status_code == 400 else None)
        err.status_code = exc.status_code
        return response_for(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return response_for(errors.ServerError(f"internal error: {type(exc).__name__}: {exc}"))
