"""The gateway's front door: pure ASGI middlewares that run before any route reads a body.

Callers: `app.create_app` stacks them, outermost first: `Metrics`, `Authenticate`, `BodyLimit`,
`RateLimit`, then the routes. Each answers with the same JSON error body as the routes
(`api.errors.response_for`).

Design notes
============
* Authentication comes first and reads only the `X-API-Key` header: a request without a valid key
  gets its 401 before a byte of its body is read, so an anonymous 60 MB body costs nothing.
  The tenant is put in the ASGI scope (`TENANT_KEY`), where `deps` reads it.
* Body limits are per kind of body: the forward_backward protobuf may be large
  (`max_request_bytes`); every JSON body has a much smaller limit (`max_json_bytes`), since
  parsing JSON costs many times its size in memory. Both are checked on `Content-Length` before
  reading and again while a chunked body streams in.
* A body must arrive within `body_timeout_s`: a client that sends headers and then trickles (or
  stops) gets a 408, and its connection is freed. Slow headers are the server's part
  (`serving.py`).
* Rate limits are per tenant, a token bucket (`limits.TokenBucket`); `retrieve_future` is not
  counted (a long poll is one request per pending future, bounded by the futures themselves).
* A tenant's requests are worked on a few at a time (`tenant_concurrency`) and a refusal keeps its
  turn until a token is due (a runtime's refusal, 429 from its queue limits, for the Retry-After
  the runtime gave, at most `refusal_hold_s`): one tenant's flood then costs the event loop, which
  every tenant shares (and, in `serve`, the model thread's interpreter too), about what its rate
  and its queues allow, not whatever its connections can send. Measured with
  tests/acceptance/test_flood.py.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplane.api import errors as api_errors
from loraplane.api import limits
from loraplane.api.auth import KeyTable
from loraplane.core import errors

#: scope key of the authenticated tenant
TENANT_KEY = "loraplane.tenant"
#: paths that need no key (liveness probes)
OPEN_PATHS = frozenset({"/healthz", "/api/v1/healthz"})
#: path prefixes whose own signature is the credential (signed, expiring export downloads)
SIGNED_PREFIXES = ("/api/v1/external_weights_files/",)


async def reject(send: Send, err: errors.LoraplaneError) -> None:
    """Send `err` as the gateway's JSON error answer (I/O)."""
    response = api_errors.response_for(err)
    await send({"type": "http.response.start", "status": err.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class Authenticate:
    """401 for a missing or unknown key before the body is read; the tenant goes into the scope.

    `/metrics` takes the metrics token instead (`Authorization: Bearer <token>`), and is not
    served at all when no token is configured.
    """

    def __init__(self, app: ASGIApp, keys: KeyTable, metrics_token: str | None) -> None:
        self.app = app
        self.keys = keys
        self.metrics_token = metrics_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(SIGNED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/metrics":
            await self._metrics(scope, receive, send)
            return
        try:
            scope[TENANT_KEY] = self.keys.tenant_for(_header(scope, b"x-api-key"))
        except errors.Unauthenticated as exc:
            await reject(send, exc)
            return
        await self.app(scope, receive, send)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.metrics_token:
            await reject(send, errors.NotFound(
                "/metrics is off: set LORAPLANE_GATEWAY__METRICS_TOKEN and scrape with that bearer token"))
            return
        presented = (_header(scope, b"authorization") or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), self.metrics_token.encode()):
            await reject(send, errors.Unauthenticated("/metrics needs 'Authorization: Bearer <metrics token>'"))
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 (JSON) for bodies over their limit; 408 for a body that does not arrive in time.

    `limit_for(path)` gives the byte limit of a path's body.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], timeout_s: float) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await reject(send, errors.PayloadTooLarge(
                f"request body of {declared} bytes is over the limit of {limit} bytes for {scope['path']}",
                field="body"))
            return
        seen = 0
        failure: errors.LoraplaneError | None = None
        deadline = time.monotonic() + self.timeout_s

        async def limited() -> Message:
            nonlocal seen, failure
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                failure = RequestTimeout(f"the request body did not arrive within {self.timeout_s:g} s")
                raise failure from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    failure = errors.PayloadTooLarge(
                        f"request body over the limit of {limit} bytes for {scope['path']}", field="body")
                    raise failure
            return message

        async def guarded(message: Message) -> None:
            # Whatever the app made of the interrupted read (FastAPI calls it a parse error), the
            # answer is the limit's.
            if failure is None:
                await send(message)
            elif message["type"] == "http.response.start":
                await reject(send, failure)

        try:
            await self.app(scope, limited, guarded)
        except errors.LoraplaneError:
            if failure is None:
                raise


class RequestTimeout(errors.UserError):
    """A client that did not send its body in time (408)."""

    status_code = 408


class RateLimit:
    """Per-tenant turns and token bucket: a tenant's requests are worked on `concurrency` at a time
    (the others wait their turn, costing nothing), and past its burst get 429 with `Retry-After`.

    The turns are what keeps one tenant's flood from slowing the others: the gateway serves every
    request on one event loop, so each request in progress delays every other tenant's next step
    by its share of the loop. However many connections a tenant opens, only `concurrency` of its
    requests are in progress at once, and a well-behaved tenant's request waits behind a few of
    them, not behind all. A refusal holds its turn a while (until a token is due; when a runtime
    refused, for the Retry-After it gave, at most `refusal_hold_s`), so a flood's refusals are
    paced as well.
    """

    def __init__(self, app: ASGIApp, rate_per_s: float, burst: int, exempt: frozenset[str],
                 clock: Callable[[], float] = time.monotonic, concurrency: int = 8,
                 refusal_hold_s: float = 0.5) -> None:
        self.app = app
        self.refusal_hold_s = refusal_hold_s
        self.exempt = exempt
        self.clock = clock
        self.buckets = limits.TenantBuckets(rate_per_s, burst)
        self.concurrency = concurrency
        self.turns: dict[str, asyncio.Semaphore] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = scope.get(TENANT_KEY) if scope["type"] == "http" else None
        if tenant is None or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        turn = self.turns.get(tenant)
        if turn is None:
            turn = self.turns[tenant] = asyncio.Semaphore(self.concurrency)
        async with turn:
            wait_s = self.buckets.take(tenant, self.clock())
            if wait_s > 0:
                await reject(send, errors.TooManyRequests(
                    f"tenant {tenant!r} is over its request rate of {self.buckets.rate_per_s:g}/s "
                    f"(burst {self.buckets.burst}); retry in {wait_s:.2f} s", retry_after_s=wait_s,
                    field="rate_per_s"))
                # The turn stays taken until a token is due: a tenant's refusals come at most
                # `concurrency` times its rate, so refusing a flood costs the loop little too.
                await asyncio.sleep(min(wait_s, 1.0))
                return
            hold_s: float | None = None

            async def watched(message: Message) -> None:
                nonlocal hold_s
                if message["type"] == "http.response.start" and message["status"] == 429:
                    hold_s = refusal_hold(message.get("headers") or (), self.refusal_hold_s)
                await send(message)

            await self.app(scope, receive, watched)
            if hold_s:
                # Refused behind the gateway (a runtime's queue of this tenant is full): the turn
                # is held until the runtime expects room, or a client that ignores Retry-After
                # would spin its refusals through the gateway and the runtime as fast as the loop
                # can answer them. Measured under test_flood.py's flood (6,000 requests), by the
                # most a hold may last: 0.1 s, 2,000 refused, the other tenant's median step 1.9x
                # its time alone; 0.5 s (the default), 600 refused, 1.45x, and the flooder still
                # admitted 90% as much work per second; 1 s, 1.3x, but half the admitted work.
                await asyncio.sleep(hold_s)


def refusal_hold(headers: Iterable[tuple[bytes, bytes]], most_s: float) -> float:
    """Seconds a runtime's 429 keeps its tenant's turn: its `Retry-After` (seconds; the finer
    `retry-after-ms` when present), at most `most_s`, and `most_s` when it gave none. Pure."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found[bytes(name).lower()] = bytes(value)
    for name, scale in ((b"retry-after-ms", 1e-3), (b"retry-after", 1.0)):
        try:
            seconds = float(found[name]) * scale
        except (KeyError, ValueError):
            continue
        if seconds >= 0:
            return min(seconds, most_s)
    return most_s
