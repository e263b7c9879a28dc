"""HTTP control of fault injection and request counters, under ``/_emulator/``.

For tests whose code under test runs in another process (a CLI, a benchmark) and so cannot
reach the :class:`~.emulator.KubeEmulator` object. Same effects as its Python methods:

- ``POST /_emulator/faults/drop-watches`` -> ``{"dropped": n}``
- ``POST /_emulator/faults/gone`` ``{"watches": n, "lists": n}``
- ``POST /_emulator/faults/conflicts`` ``{"count": n, "plural"?, "namespace"?, "name"?}``
- ``POST /_emulator/faults/errors`` ``{"count": n, "code"?: 500, "verb"?, "path"?}``
- ``POST /_emulator/faults/latency`` ``{"seconds": s}``
- ``POST /_emulator/faults/reset``
- ``GET /_emulator/requests`` -> ``{"requests": [{"verb", "path", "count"}, ...]}``

These requests need the same token, are not counted and are never faulted. Bad input is a
400 ``Status`` naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from . import statuses
from .faults import ConflictRule, ErrorRule, Faults
from .store import ObjectStore

PREFIX = "/_emulator/"


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None,
           required: bool = False) -> Any:
    """One field of a control request, type-checked; pure, 400 naming the field when wrong."""
    if name not in body or body[name] is None:
        if required:
            raise statuses.bad_request(f"{name}: Required value")
        return default
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise statuses.bad_request(f"{name}: Invalid value: {json.dumps(value)}: must be of type "
                                   f"{getattr(kind, '__name__', 'number')}")
    if isinstance(value, int | float) and value < 0:
        raise statuses.bad_request(f"{name}: Invalid value: {value}: must be non-negative")
    return value


def _pattern(body: dict[str, Any]) -> re.Pattern[str] | None:
    path = _field(body, "path", str)
    try:
        return re.compile(path) if path else None
    except re.error as exc:
        raise statuses.bad_request(f"path: Invalid value: {json.dumps(path)}: {exc}") from exc


class Control:
    """The ``/_emulator/`` handlers over the shared faults and the store's watches."""

    def __init__(self, faults: Faults, store: ObjectStore) -> None:
        self.faults = faults
        self.store = store

    async def handle(self, request: web.Request) -> web.Response:
        """Route one control request; StatusErrors are answered by the server's middleware."""
        action = request.path.removeprefix(PREFIX)
        if request.method == "GET" and action == "requests":
            counts = self.faults.snapshot_counts()
            rows = [{"verb": verb, "path": path, "count": count} for (verb, path), count in sorted(counts.items())]
            return web.json_response({"requests": rows})
        if request.method != "POST" or not action.startswith("faults/"):
            raise statuses.StatusError("NotFound", f"no emulator control at {request.method} {request.path}")
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise statuses.bad_request(f"the body could not be decoded as JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise statuses.bad_request("the body must be a JSON object")
        return web.json_response(self._apply(action.removeprefix("faults/"), body))

    def _apply(self, fault: str, body: dict[str, Any]) -> dict[str, Any]:
        if fault == "drop-watches":
            return {"dropped": self.store.close_subscriptions()}
        if fault == "gone":
            self.faults.arm_gone(watches=_field(body, "watches", int, 0), lists=_field(body, "lists", int, 0))
        elif fault == "conflicts":
            self.faults.arm_conflict(ConflictRule(_field(body, "count", int, required=True),
                                                  _field(body, "plural", str), _field(body, "namespace", str),
                                                  _field(body, "name", str)))
        elif fault == "errors":
            code = _field(body, "code", int, 500)
            if not 400 <= code <= 599:
                raise statuses.bad_request(f"code: Invalid value: {code}: must be an HTTP error code (400-599)")
            self.faults.arm_error(ErrorRule(_field(body, "count", int, required=True), code,
                                            _field(body, "verb", str), _pattern(body)))
        elif fault == "latency":
            self.faults.latency = float(_field(body, "seconds", (int, float), required=True))
        elif fault == "reset":
            self.faults.reset()
        else:
            raise statuses.StatusError("NotFound", f"unknown fault {fault!r}: expected one of drop-watches, gone, "
                                       "conflicts, errors, latency, reset")
        return {"armed": fault}
