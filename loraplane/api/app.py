"""The gateway's FastAPI application.

Callers: `loraplane serve` (single-node) and `loraplane gateway` (Kubernetes), which build a
`Gateway` and a `KeyTable` and pass them in; tests do the same with an in-process transport.

Design notes
============
* Health (`/healthz`, `/api/v1/healthz`) needs no key; `/metrics` needs the metrics token; every
  other route needs an API key, checked before the body is read (`guards`).
* Body limits (per kind of body), the body-read timeout and per-tenant rates are `guards` too.
* `/openapi.json` is served only when `GatewaySettings.openapi` is on, and then behind the key.
* The signed export file URLs (`routes.exports`) need no key either: their signature is the
  credential.
* Metrics are one counter and one histogram per route template, labelled by status class, kept by
  a pure ASGI middleware that costs a few microseconds per request.
* The per-step calls (forward_backward, optim_step, retrieve_future: two requests per training
  step) take the fast lane (`asgi.fastlane.FastLane`), a pure ASGI middleware that hands them straight to their endpoints. They
  are still FastAPI routes (the lane calls the same functions), but they skip FastAPI's route
  matching, exit stacks and dependency solving, which cost more than the gateway's own work on
  them. Errors become the same JSON answers as everywhere else (`api.errors`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplane.api import access_log, guards, sdk_versions, sessions_expiry, tenant_metrics
from loraplane.api import errors as api_errors
from loraplane.api.auth import KeyTable
from loraplane.api.gateway import Gateway
from loraplane.api.routes import checkpoints, exports, futures, jobs, sampling, sessions, training
from loraplane.asgi.fastlane import FastLane, Handler
from loraplane.core.settings import GatewaySettings

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
#: the per-step endpoints the fast lane (`asgi.fastlane.FastLane`) serves (POST, exact path under API_PREFIX)
STEP_PATHS = ("/forward_backward", "/optim_step", "/retrieve_future")


class Metrics:
    """Pure ASGI middleware: requests by route template and status class, and their latency.

    Pure ASGI rather than `BaseHTTPMiddleware`, which costs a task and a stream per request.
    """

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("loraplane_gateway_requests", "Gateway requests", ["route", "status"],
                                registry=registry)
        self.latency = Histogram(
            "loraplane_gateway_request_seconds", "Gateway request latency (retrieve_future includes its long poll)",
            ["route"], registry=registry, buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 40),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(route, f"{status // 100}xx").inc()
            self.latency.labels(route).observe(time.perf_counter() - start)


def step_lane(routes: dict[str, APIRoute]) -> Callable[[dict[str, Any]], Handler | None]:
    """`FastLane`'s choice at the gateway: POSTs to the per-step paths go to their route's endpoint
    (which takes only the `Request`), with the route put in the scope as the router would, so that
    `Metrics` and the access log label it alike."""

    def pick(scope: dict[str, Any]) -> Handler | None:
        route = routes.get(scope["path"]) if scope["method"] == "POST" else None
        if route is None:
            return None
        scope["route"] = route
        return route.endpoint

    return pick


def step_routes() -> dict[str, APIRoute]:
    """The APIRoutes the fast lane (`asgi.fastlane.FastLane`) serves, by full path (the route modules' own route objects, which
    is also what the router puts in the scope). Called by `create_app` once."""
    found = {API_PREFIX + r.path: r for module in (training, futures) for r in module.router.routes
             if isinstance(r, APIRoute) and r.path in STEP_PATHS and "POST" in r.methods}
    if len(found) != len(STEP_PATHS):
        raise RuntimeError(f"per-step routes missing: {sorted(set(STEP_PATHS) - {r.path for r in found.values()})}")
    return found


def create_app(gateway: Gateway, keys: KeyTable, *, settings: GatewaySettings | None = None,
               on_shutdown: Callable[[], Awaitable[Any]] | None = None) -> FastAPI:
    """The gateway app; `on_shutdown` runs after the gateway's own clean-up (single-node stops its runtimes).

    `settings` gives the front door's limits (`guards`); the defaults when None. The protobuf body
    limit is the gateway's own `max_request_bytes`.
    """
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(a: FastAPI):  # type: ignore[no-untyped-def]
        expiry.ttl_s = float(a.state.session_expiry_s)
        sweeper = asyncio.create_task(expiry.run()) if expiry.ttl_s > 0 else None
        yield
        if sweeper is not None:
            sweeper.cancel()
        await gateway.runtimes.close()
        await gateway.cp.close()
        if on_shutdown is not None:
            await on_shutdown()

    app = FastAPI(title="loraplane gateway", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.openapi else None)
    app.state.gateway = gateway
    app.state.keys = keys
    api_errors.install(app)
    registry = CollectorRegistry()
    app.state.metrics_registry = registry  # single-node adds its in-process runtimes' series here
    app.state.url_signing_secret = settings.url_signing_key
    #: seconds without a heartbeat before a session expires (0 = never)
    app.state.session_expiry_s = settings.session_expiry_s
    app.state.sdk_versions = settings.sdk_versions
    expiry = sessions_expiry.SessionExpiry(gateway, settings.session_expiry_s, registry)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    health = APIRouter()

    @health.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(health)
    app.include_router(health, prefix=API_PREFIX)
    for module in (sessions, training, sampling, futures, checkpoints, exports):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(jobs.router, prefix=jobs.PREFIX)
    _stack_front_door(app, gateway, keys, settings, registry)
    return app


def _stack_front_door(app: FastAPI, gateway: Gateway, keys: KeyTable, settings: GatewaySettings,
                      registry: CollectorRegistry) -> None:
    """The pure-ASGI layers around the routes, outermost last: access log, SDK version gate,
    metrics, the key, body limits, per-tenant rates, the per-step lane."""
    app.add_middleware(FastLane, pick=step_lane(step_routes()), error_response=api_errors.response_for)
    app.add_middleware(guards.RateLimit, rate_per_s=settings.rate_per_s, burst=settings.rate_burst,
                       exempt=frozenset({API_PREFIX + "/retrieve_future"}), concurrency=settings.tenant_concurrency,
                       refusal_hold_s=settings.refusal_hold_s)

    def body_limit(path: str) -> int:
        return gateway.max_request_bytes if path == API_PREFIX + "/forward_backward" else settings.max_json_bytes

    app.add_middleware(guards.BodyLimit, limit_for=body_limit, timeout_s=settings.body_timeout_s)
    app.add_middleware(guards.Authenticate, keys=keys, metrics_token=settings.metrics_token)
    app.add_middleware(tenant_metrics.TenantMetrics, registry=registry)
    app.add_middleware(Metrics, registry=registry)
    app.add_middleware(sdk_versions.SdkVersionGate)
    app.add_middleware(access_log.AccessLog)
