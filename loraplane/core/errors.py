"""The loraplane exception hierarchy, shared by runtime, gateway and operator.

    LoraplaneError                 base; never raised directly
    ├── UserError                  the caller sent something wrong (HTTP 4xx, Tinker category "user")
    │   ├── InvalidInput           a field has a bad value (400); `field` names it
    │   ├── NotFound               an id or path that does not exist, or belongs to another tenant (404)
    │   ├── Conflict               the resource exists with a different shape (409)
    │   ├── Unauthenticated        missing or unknown API key (401)
    │   ├── Forbidden              allowed to no one of this tenant, whatever the retry (403)
    │   └── PayloadTooLarge        a request body over the configured limit (413)
    ├── CapacityError              no runtime has room right now; retryable (503)
    │   ├── TooManyRequests        over a rate or queue limit; retry after `retry_after_s` (429)
    │   └── StoreUnavailable       the artifact store refused a write: read-only, full, gone (507)
    └── ServerError                a fault on our side (500, Tinker category "server")

Each carries `status_code` and `category` so that the HTTP layers map them in one place
(`loraplane.api.errors`, `loraplane.runtime.api`), and messages say what to do about it.
"""

from __future__ import annotations

from typing import Any


class LoraplaneError(Exception):
    status_code: int = 500
    category: str = "server"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"detail": self.message, "error": self.message, "category": self.category}
        if self.field is not None:
            body["field"] = self.field
        return body


class UserError(LoraplaneError):
    status_code = 400
    category = "user"


class InvalidInput(UserError):
    """A value the caller sent is wrong; `field` names it and the message says what would be right."""

    status_code = 400


class NotFound(UserError):
    """No such thing, or not the caller's: another tenant's resource is answered exactly like a missing one,
    so that ids cannot be probed."""

    status_code = 404


class Conflict(UserError):
    status_code = 409  # exists with other settings, or taken by another tenant


class Unauthenticated(UserError):
    """No API key, or one no tenant has."""

    status_code = 401


class Forbidden(UserError):
    """A known tenant asked for more than it may: over a quota, or for another tenant's name.

    Also the answer to a count over its limit, where 409 would be natural: SDK 0.38 retries a 409
    until its progress timeout, so the caller would wait instead of being told.
    """

    status_code = 403


class PayloadTooLarge(UserError):
    status_code, category = 413, "user"


class CapacityError(LoraplaneError):
    status_code = 503
    category = "server"


class TooManyRequests(CapacityError):
    status_code = 429

    def __init__(self, message: str, *, retry_after_s: float = 1.0, field: str | None = None) -> None:
        super().__init__(message, field=field)
        #: seconds the caller should wait (the `Retry-After` header)
        self.retry_after_s = retry_after_s


class StoreUnavailable(CapacityError):
    """Messages name the cause (read-only, full) but never the store's path, which is the server's business."""

    status_code = 507


class ServerError(LoraplaneError):
    status_code = 500
    category = "server"


#: HTTP status -> the class a caller catches (the inverse of `status_code`, where it is ambiguous
#: the most general class: 422 is a bad field too, 429 and 503 both mean "no room now").
_BY_STATUS: dict[int, type[LoraplaneError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: TooManyRequests,
    503: CapacityError,
    507: StoreUnavailable,
}


def class_for_status(status_code: int) -> type[LoraplaneError]:
    """The error class for an HTTP status answered by another loraplane component or a framework."""
    return _BY_STATUS.get(status_code) or (UserError if status_code < 500 else ServerError)


#: Parts of a framework's error location that name where the value came from, not the field.
_LOCATION_PARTS = frozenset({"body", "query", "path", "header"})


def invalid_input(problems: object, *, prefix: str = "", every: bool = False) -> InvalidInput:
    """The InvalidInput of a failed validation, naming its first bad field. Pure.

    `problems` is pydantic's error list (`ValidationError.errors()`, or FastAPI's
    `RequestValidationError.errors()`, whose locations start with "body" or "query"). The one
    translator from validation errors to a 400: the gateway, the runtime's API and the engine's
    own checks all call it, so every bad field is answered the same way. `prefix` is put before the
    field's path (`"sampling_params."`). `every` lists every problem in the message, joined by
    "; " (the field stays the first): for what people write by hand, a manifest, where fixing one
    typo only to be told of the next wastes their time.
    """
    items = [p for p in problems if isinstance(p, dict)] if isinstance(problems, list | tuple) else []
    if not items:
        items = [{"loc": (), "msg": "invalid request"}]
    if items[0].get("type") == "json_invalid":
        return InvalidInput(f"body is not valid JSON: {items[0].get('msg')}", field="body")
    named = [_named_problem(p, prefix) for p in (items if every else items[:1])]
    return InvalidInput("; ".join(f"{where}: {message}" for where, message in named), field=named[0][0])


def _named_problem(problem: dict[str, Any], prefix: str) -> tuple[str, str]:
    """(field path, message) of one pydantic problem. Pure."""
    parts = [str(p) for p in problem.get("loc", ()) if p not in _LOCATION_PARTS]
    where = prefix + ".".join(parts) if parts else (prefix.rstrip(".") or "body")
    return where, str(problem.get("msg", "invalid value")).removeprefix("Value error, ")
