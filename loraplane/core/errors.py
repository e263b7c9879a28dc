"""The loraplane exception hierarchy, shared by runtime, gateway and operator.

    LoraplaneError                 base; never raised directly
    ├── UserError                  the caller sent something wrong (HTTP 4xx, Tinker category "user")
    │   ├── InvalidInput           a field has a bad value (400); `field` names it
    │   ├── NotFound               an id or path that does not exist, or belongs to another tenant (404)
    │   ├── Conflict               the resource exists with a different shape (409)
    │   ├── Unauthenticated        missing or unknown API key (401)
    │   └── PayloadTooLarge        a request body over the configured limit (413)
    ├── CapacityError              no runtime has room right now; retryable (429 / 503)
    └── ServerError                a fault on our side (500, Tinker category "server")

Each carries `status_code` and `category` so that the HTTP layers map them in one place
(`loraplane.api.errors`, `loraplane.runtime.api`), and messages say what to do about it.
"""

from __future__ import annotations


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
    status_code = 400


class NotFound(UserError):
    status_code = 404


class Conflict(UserError):
    status_code = 409


class Unauthenticated(UserError):
    status_code = 401


class PermissionDenied(UserError):
    status_code = 403


class PayloadTooLarge(UserError):
    status_code = 413


class CapacityError(LoraplaneError):
    status_code = 503
    category = "server"


class ServerError(LoraplaneError):
    status_code = 500
    category = "server"


#: HTTP status -> the class a caller catches (the inverse of `status_code`, where it is ambiguous
#: the most general class: 422 is a bad field too, 429 and 503 both mean "no room now").
_BY_STATUS: dict[int, type[LoraplaneError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: CapacityError,
    503: CapacityError,
}


def class_for_status(status_code: int) -> type[LoraplaneError]:
    """The error class for an HTTP status answered by another loraplane component or a framework."""
    return _BY_STATUS.get(status_code) or (UserError if status_code < 500 else ServerError)
