"""A fault-injecting HTTPS proxy in front of the real kube-apiserver, for the failure tests.

Clients that authenticate with a bearer token (the operator and the gateway as their
ServiceAccounts) are pointed at the proxy instead of the server; it forwards every request
unchanged, streams watches through, counts requests by Kubernetes verb and path, and on demand
fails them the ways a cluster does: watches that end (an API server restart or a load balancer
timeout), `410 Gone` on a resumed watch or a list (etcd compaction), `409 Conflict` on writes
(another writer), any status code (a 5xx from an overloaded server), and latency. It serves TLS
with the API server's own certificate, which is valid for 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import ssl
import threading
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.k8s.faults import ConflictRule, ErrorRule, Faults

#: Request headers passed upstream (hop-by-hop ones and Host are aiohttp's to set).
FORWARDED = ("authorization", "content-type", "accept", "user-agent", "accept-encoding")
_PATH = re.compile(r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?(?:/(?P<rest>.*))?$")


def classify(method: str, path: str, query: dict[str, str]) -> tuple[str, str | None, str | None, str | None]:
    """(Kubernetes verb, plural, namespace, name) of a request, as the API server's audit log names them."""
    m = _PATH.match(path)
    if not m:
        return method.lower(), None, None, None
    namespace, rest = m.group("ns"), [p for p in (m.group("rest") or "").split("/") if p]
    if namespace is not None and not rest:  # the namespace object itself
        rest = ["namespaces", namespace]
        namespace = None
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    if method == "GET":
        if query.get("watch") in ("true", "1", "True"):
            verb = "watch"
        else:
            verb = "get" if name else "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())
    return verb, plural, namespace, name


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class FaultProxy:
    """The proxy on a free loopback port, in its own thread and event loop; `close()` stops it."""

    def __init__(self, upstream: str, ca: Path, cert: Path, key: Path) -> None:
        self.upstream = upstream
        self.faults = Faults()
        self._client_ssl = ssl.create_default_context(cafile=str(ca))
        self._server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ssl.load_cert_chain(str(cert), str(key))
        self._loop = asyncio.new_event_loop()
        self._watches: dict[aiohttp.ClientResponse, str] = {}  # open upstream watch -> its path
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="k8s-fault-proxy")
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        assert self._started.wait(10), "fault proxy did not start"
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._open())
        self._started.set()
        self._loop.run_forever()

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                                              auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._server_ssl)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def close(self) -> None:
        async def shutdown() -> None:
            for upstream in list(self._watches):
                upstream.close()
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(15)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # -- faults, called from the test thread ---------------------------------------------------------

    def drop_watches(self, path: str | None = None, *, at_least: int = 0, timeout: float = 15.0) -> int:
        """End the open watch streams whose path matches the regex `path` (cleanly, as a server does at
        its timeout); how many were open.

        A watch is counted when its request arrives but is open only once the API server answers, so
        a test that needs some to end passes `at_least`: this waits until that many are open.
        """
        pattern = re.compile(path) if path else None

        def matching() -> list[aiohttp.ClientResponse]:
            return [w for w, p in list(self._watches.items()) if pattern is None or pattern.search(p)]

        async def drop() -> int:
            deadline = self._loop.time() + timeout
            while len(matching()) < at_least and self._loop.time() < deadline:
                await asyncio.sleep(0.02)
            open_ = matching()
            for upstream in open_:
                upstream.close()
            return len(open_)

        return asyncio.run_coroutine_threadsafe(drop(), self._loop).result(timeout + 10)

    def fail_next_watches(self, n: int) -> None:
        self.faults.arm_gone(watches=n)

    def fail_next_lists(self, n: int) -> None:
        self.faults.arm_gone(lists=n)

    def conflict_next_writes(self, n: int, *, plural: str | None = None, namespace: str | None = None,
                             name: str | None = None) -> None:
        self.faults.arm_conflict(ConflictRule(n, plural, namespace, name))

    def fail_next_requests(self, n: int, *, code: int = 500, verb: str | None = None, path: str | None = None) -> None:
        self.faults.arm_error(ErrorRule(n, code, verb, re.compile(path) if path else None))

    def set_latency(self, seconds: float) -> None:
        self.faults.latency = seconds

    def request_count(self, verb: str | None = None, path: str | None = None) -> int:
        """Requests so far with that verb whose path matches the regex `path` (either may be None)."""
        pattern = re.compile(path) if path else None
        return sum(n for (v, p), n in self.faults.snapshot_counts().items()
                   if (verb is None or v == verb) and (pattern is None or pattern.search(p)))

    def request_counts(self) -> collections.Counter[tuple[str, str]]:
        return self.faults.snapshot_counts()

    # -- the proxy -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        verb, plural, namespace, name = classify(request.method, request.path, dict(request.query))
        self.faults.record(verb, request.path)
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        code = self.faults.take_error(verb, request.path)
        if code is not None:
            return web.json_response(status_body(code, "InternalError" if code >= 500 else "BadRequest",
                                                 f"injected fault: {code}"), status=code)
        if verb in ("list", "watch") and self.faults.take_gone(verb):
            gone = status_body(410, "Expired", "too old resource version: injected (compacted)")
            if verb == "list":
                return web.json_response(gone, status=410)
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            await response.write_eof()
            return response
        if verb in ("update", "patch") and plural and name and self.faults.take_conflict(plural, namespace, name):
            return web.json_response(status_body(
                409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has been '
                                 "modified; please apply your changes to the latest version and try again"),
                status=409)
        return await self._forward(request, watch=verb == "watch")

    async def _forward(self, request: web.Request, *, watch: bool) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
        body = await request.read()
        upstream = await self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                               data=body or None, ssl=self._client_ssl)
        try:
            if not watch:
                payload = await upstream.read()
                return web.Response(body=payload, status=upstream.status,
                                    headers={k: v for k, v in upstream.headers.items()
                                             if k.lower() in ("content-type", "content-encoding", "audit-id")})
            response = web.StreamResponse(status=upstream.status, headers={
                "Content-Type": upstream.headers.get("Content-Type", "application/json")})
            await response.prepare(request)
            self._watches[upstream] = request.path
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionError):
                pass  # dropped: the client sees the stream end
            finally:
                self._watches.pop(upstream, None)
            await response.write_eof()
            return response
        finally:
            upstream.release()
