"""The runtime's side of the request id: taken from `X-Request-ID`, kept for the call and its op.

Callers: `runtime.api.create_app` installs `RequestLog` outermost. The gateway sends its request
id with every call (`clients.runtime`); this middleware puts it in `core.logs.request_id`, so
the executor records it on the op (`ops.Op.origin`) and the lines about that op, also those written
on the model thread, carry it. Answers of 400 and above are logged at INFO with their reason,
successful calls at DEBUG; headers and query strings are never logged.
"""

from __future__ import annotations

import logging
from typing import Any

from loraplane.asgi.request_scope import RequestScoped, ResponseWatch

log = logging.getLogger("loraplane.runtime.requests")


class RequestLog(RequestScoped):
    mint = False  # ids start at the gateway; a call without one (a probe, a test) has none

    def done(self, scope: dict[str, Any], headers: dict[bytes, bytes], rid: str | None,
             answer: ResponseWatch, elapsed_s: float) -> None:
        ms = elapsed_s * 1000
        if answer.status >= 400:
            log.info("runtime answered %d to %s %s in %.1f ms: %s", answer.status, scope.get("method"),
                     scope.get("path"), ms, answer.reason())
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("runtime answered %d to %s %s in %.1f ms", answer.status, scope.get("method"),
                      scope.get("path"), ms)
