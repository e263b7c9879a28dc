"""The aiohttp adapter: Kubernetes API paths and verbs mapped onto :class:`~.cluster.Cluster`.

Built by :class:`~.emulator.KubeEmulator`, which serves it on 127.0.0.1 from its own
thread. One middleware does, for every request and in this order: bearer-token
authentication, counting (by Kubernetes verb and path), added latency, injected
errors, and the translation of :class:`~.statuses.StatusError` into a ``Status`` body.
Requests to ``/_emulator/`` (:mod:`.control`) are authenticated but neither counted nor faulted.
The one handler then routes the path (:mod:`.paths`) and calls the cluster; watches
are streamed here with the rules of :mod:`.watching`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

from aiohttp import web

from . import cluster, control, discovery, paths, statuses, watching
from .cluster import Cluster
from .faults import Faults
from .resources import ResourceType
from .store import Subscription, TooOldResourceVersion

LOGGER = logging.getLogger(__name__)
_WRITE_VERBS = {"PUT": "update", "PATCH": "patch", "POST": "create"}


def flag(value: str | None) -> bool:
    """A boolean query parameter, read as Go's strconv.ParseBool reads it (``true``, ``True``, ``1``, ``t``...)."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def kube_verb(method: str, route: paths.Route, query: dict[str, str]) -> str:
    """The Kubernetes verb of a request (get, list, watch, create, ...); pure, used for counting and faults."""
    if method == "GET":
        if route.target == "collection":
            return "watch" if flag(query.get("watch")) else "list"
        return "get"
    if method == "DELETE":
        return "deletecollection" if route.target == "collection" else "delete"
    return _WRITE_VERBS.get(method, method.lower())


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


class Server:
    """Request handling for one emulated cluster.

    Args:
        cluster: the objects and resource types.
        faults: armed faults and request counters, shared with the test thread.
        token: the bearer token clients must send; None accepts any request.
        bookmark_interval: seconds of quiet after which a watch sends a BOOKMARK.
        default_watch_timeout: seconds a watch without ``timeoutSeconds`` stays open.
    """

    def __init__(self, cluster: Cluster, faults: Faults, token: str | None = None,
                 bookmark_interval: float = 60.0, default_watch_timeout: float = 1800.0) -> None:
        self.cluster = cluster
        self.faults = faults
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.address = ""  #: host:port, for /api's serverAddressByClientCIDRs
        self.control = control.Control(faults, cluster.store)  #: the /_emulator/ fault-control handlers

    def make_app(self) -> web.Application:
        """The aiohttp application: one middleware, one catch-all route."""
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", control.PREFIX + "{action:.*}", self.control.handle)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _json(statuses.failure_status(401, "Unauthorized", "Unauthorized"), 401)
        route = paths.parse_path(request.path)
        verb = kube_verb(request.method, route, dict(request.query))
        is_control = request.path.startswith(control.PREFIX)
        if not is_control:
            self.faults.record(verb, request.path)
            if self.faults.latency > 0:
                await asyncio.sleep(self.faults.latency)
        code = None if is_control else self.faults.take_error(verb, request.path)
        if code is not None:
            reason = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}.get(code, "Unknown")
            return _json(statuses.failure_status(code, reason, f"injected fault: {code} for {verb} {request.path}"),
                         code)
        try:
            return await handler(request)
        except statuses.StatusError as exc:
            return _json(exc.to_status(), exc.code)
        except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # a bug in the emulator: answer as the real server answers a panic
            LOGGER.exception("emulator failed on %s %s", request.method, request.path)
            return _json(statuses.failure_status(500, "InternalError", f"an error on the server ({exc!r}) has "
                                                 "prevented the request from succeeding"), 500)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise statuses.bad_request(f"the body of the request could not be decoded as JSON: {exc}") from exc

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        route = paths.parse_path(request.path)
        if route.target in ("version", "api", "apis", "group", "resourcelist"):
            if request.method != "GET":
                raise statuses.StatusError("MethodNotAllowed", f"the server does not allow this method on the "
                                           f"requested resource ({request.method} {request.path})")
            return self._discovery(route)
        if route.target == "unknown":
            raise statuses.StatusError("NotFound", "the server could not find the requested resource")
        if "dryRun" in request.query:
            raise statuses.bad_request(f'dryRun: Unsupported value: "{request.query["dryRun"]}": dry runs are not '
                                       "emulated (they would be stored)")
        rt = self.cluster.resource_type(route.group, route.version, route.plural)
        if route.namespace is not None and not rt.namespaced:
            raise statuses.StatusError("NotFound", "the server could not find the requested resource")
        if route.subresource not in (None, "status") or (route.subresource == "status" and not rt.status_subresource):
            raise statuses.StatusError("NotFound", "the server could not find the requested resource")
        if route.target == "collection":
            return await self._collection(request, route, rt)
        return await self._object(request, route, rt)

    def _discovery(self, route: paths.Route) -> web.Response:
        types = list(self.cluster.types.values())
        body: dict[str, Any] | None
        if route.target == "version":
            body = dict(discovery.VERSION_INFO)
        elif route.target == "api":
            body = discovery.core_versions(self.address)
        elif route.target == "apis":
            body = discovery.group_list(types)
        elif route.target == "group":
            body = discovery.group(types, route.group)
        else:
            body = discovery.resource_list(types, route.group, route.version)
        if body is None:
            raise statuses.StatusError("NotFound", "the server could not find the requested resource")
        return _json(body)

    async def _collection(self, request: web.Request, route: paths.Route, rt: ResourceType) -> web.StreamResponse:
        query = request.query
        labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
        if request.method == "GET" and flag(query.get("watch")):
            return await self._watch(request, route, rt)
        if request.method == "GET":
            return self._list(route, rt, dict(query))
        if request.method == "POST":
            return _json(self.cluster.create(rt, route.namespace, await self._body(request)), 201)
        if request.method == "DELETE":
            return _json(self.cluster.delete_collection(rt, route.namespace, labels, fields))
        raise statuses.StatusError("MethodNotAllowed", f"the server does not allow this method on the requested "
                                   f"resource ({request.method} {request.path})")

    def _list(self, route: paths.Route, rt: ResourceType, query: dict[str, str]) -> web.Response:
        if self.faults.take_gone("list"):
            raise statuses.StatusError("Expired", "too old resource version: injected fault")
        requested = query.get("resourceVersion", "")
        if query.get("resourceVersionMatch") == "Exact" and requested.isdigit() \
                and int(requested) < self.cluster.store.compacted_rv:
            raise statuses.StatusError("Expired", f"too old resource version: {requested} "
                                       f"({self.cluster.store.compacted_rv + 1})")
        items, resource_version = self.cluster.list(rt, route.namespace, query.get("labelSelector", ""),
                                                    query.get("fieldSelector", ""))
        metadata: dict[str, Any] = {"resourceVersion": resource_version}
        start = _decode_continue(query.get("continue", ""))
        if start is not None:
            items = [item for item in items if _item_key(item) > start]
        limit = _int_param(query, "limit")
        if limit is not None and 0 < limit < len(items):
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            token = json.dumps({"start": _item_key(items[-1]), "rv": resource_version})
            metadata["continue"] = base64.urlsafe_b64encode(token.encode()).decode()
        return _json({"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": metadata, "items": items})

    async def _object(self, request: web.Request, route: paths.Route, rt: ResourceType) -> web.Response:
        assert route.name is not None
        if request.method == "GET":
            return _json(self.cluster.read(rt, route.namespace, route.name))
        if request.method in ("PUT", "PATCH"):
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            if request.method == "PATCH" and content_type not in cluster.PATCH_TYPES:
                raise cluster.unsupported_patch_type()
            body = await self._body(request)
            if body is None:
                raise statuses.bad_request("the request body is empty")
            self.cluster.read(rt, route.namespace, route.name)  # 404 before an injected conflict
            if self.faults.take_conflict(rt.plural, route.namespace, route.name):
                raise statuses.conflict(rt.plural, rt.group, route.name)
            if request.method == "PUT":
                return _json(self.cluster.update(rt, route.namespace, route.name, body, route.subresource))
            return _json(self.cluster.patch(rt, route.namespace, route.name, content_type, body,
                                            route.subresource))
        if request.method == "DELETE" and route.subresource is None:
            options = await self._body(request) or {}
            if not isinstance(options, dict):
                raise statuses.bad_request("the body of a DELETE must be a DeleteOptions object")
            if "propagationPolicy" in request.query:
                options["propagationPolicy"] = request.query["propagationPolicy"]
            return _json(self.cluster.delete(rt, route.namespace, route.name, options))
        raise statuses.StatusError("MethodNotAllowed", f"the server does not allow this method on the requested "
                                   f"resource ({request.method} {request.path})")

    async def _watch(self, request: web.Request, route: paths.Route, rt: ResourceType) -> web.StreamResponse:
        query = request.query
        matches = watching.matcher(rt, query.get("labelSelector", ""), query.get("fieldSelector", ""))
        bookmarks = flag(query.get("allowWatchBookmarks"))
        timeout = float(_int_param(query, "timeoutSeconds") or self.default_watch_timeout)
        store = self.cluster.store
        subscription = Subscription(rt.storage_key, route.namespace if rt.namespaced else None)
        lines: list[dict[str, Any]] = []
        requested = query.get("resourceVersion", "")
        # Read what must be replayed and subscribe with no await in between: nothing lost, nothing repeated.
        if self.faults.take_gone("watch"):
            lines.append(_gone(f"too old resource version: {requested or 0} (injected fault)"))
        elif requested in ("", "0") or flag(query.get("sendInitialEvents")):
            for obj in store.iter_objects(rt.storage_key, subscription.namespace):
                if matches(obj):
                    lines.append({"type": "ADDED", "object": self._served(rt, obj)})
            if flag(query.get("sendInitialEvents")) and bookmarks:
                lines.append(watching.bookmark(rt, store.resource_version, initial_events_end=True))
            store.subscribe(subscription)
        elif not requested.isdigit():
            raise statuses.bad_request(f'invalid resource version "{requested}"')
        else:
            try:
                backlog = store.events_since(int(requested), subscription)
            except TooOldResourceVersion as exc:
                lines.append(_gone(str(exc)))
            else:
                lines += [self._event_line(rt, event, matches) for event in backlog]
                store.subscribe(subscription)
        lines = [line for line in lines if line is not None]
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for line in lines:
                await response.write(json.dumps(line).encode() + b"\n")
            if subscription in store.subscriptions:
                await self._stream(response, subscription, rt, matches, timeout, bookmarks)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-write
        finally:
            store.unsubscribe(subscription)
        return response

    async def _stream(self, response: web.StreamResponse, subscription: Subscription, rt: ResourceType,
                      matches: watching.Matcher, timeout: float, bookmarks: bool) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            what, event = await watching.next_event(subscription.queue, deadline, self.bookmark_interval)
            if what == "event" and event is None:
                return  # dropped by fault injection or shutdown
            if what == "event":
                line = self._event_line(rt, event, matches)
                if line is not None:
                    await response.write(json.dumps(line).encode() + b"\n")
                continue
            if bookmarks and subscription.queue.empty():
                bookmark = watching.bookmark(rt, self.cluster.store.resource_version)
                await response.write(json.dumps(bookmark).encode() + b"\n")
            if what == "timeout":
                return

    def _served(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        return {**obj, "apiVersion": rt.api_version}

    def _event_line(self, rt: ResourceType, event: Any, matches: watching.Matcher) -> dict[str, Any] | None:
        event_type = watching.translate(event, matches)
        if event_type is None:
            return None
        return {"type": event_type, "object": self._served(rt, event.new)}


def _int_param(query: Any, name: str) -> int | None:
    """A non-negative integer query parameter, or None when absent; 400 naming it when malformed."""
    raw = query.get(name)
    if raw in (None, ""):
        return None
    if not str(raw).isdigit():
        raise statuses.bad_request(f'invalid value for {name}: "{raw}": must be a non-negative integer')
    return int(raw)


def _gone(message: str) -> dict[str, Any]:
    return {"type": "ERROR", "object": statuses.failure_status(410, "Expired", message)}


def _item_key(item: dict[str, Any]) -> str:
    return f"{item['metadata'].get('namespace', '')}/{item['metadata']['name']}"


def _decode_continue(token: str) -> str | None:
    """The last key of the previous page, from a continue token; 400 for a token that does not decode."""
    if not token:
        return None
    try:
        return str(json.loads(base64.urlsafe_b64decode(token.encode()))["start"])
    except (ValueError, KeyError, TypeError) as exc:
        raise statuses.bad_request(f"continue key is not valid: {exc}") from exc
