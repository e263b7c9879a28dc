"""Status objects: the one shape in which the emulator reports every failure.

The real API server answers every error with a ``Status`` object (``kind: Status``,
``status: Failure``, a machine-readable ``reason`` and an HTTP ``code``); clients such
as Kopf and kubernetes_asyncio pick their exception class from the code and read the
message and details from the body. Request handlers raise :class:`StatusError` and the
server adapter turns it into that body, so the wording lives in one place.

The messages follow the real server's wording (``pods "x" not found``,
``Operation cannot be fulfilled on ...``) because tests and clients match on them.
"""

from __future__ import annotations

from typing import Any

#: HTTP code for each reason the emulator uses, as the real server pairs them.
REASON_CODES: dict[str, int] = {
    "BadRequest": 400,
    "Unauthorized": 401,
    "NotFound": 404,
    "MethodNotAllowed": 405,
    "NotAcceptable": 406,
    "AlreadyExists": 409,
    "Conflict": 409,
    "Gone": 410,
    "Expired": 410,
    "UnsupportedMediaType": 415,
    "Invalid": 422,
    "TooManyRequests": 429,
    "InternalError": 500,
    "ServiceUnavailable": 503,
}


class StatusError(Exception):
    """A request failure that the server adapter answers with a ``Status`` body.

    Args:
        reason: a Kubernetes ``StatusReason`` such as ``NotFound`` or ``Invalid``.
        message: the human-readable message, in the real server's wording.
        details: the ``details`` block (name, group, kind, causes), if any.
        code: the HTTP code; taken from :data:`REASON_CODES` when not given.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details
        self.code = code if code is not None else REASON_CODES.get(reason, 500)

    def to_status(self) -> dict[str, Any]:
        """The ``Status`` body for this error, as sent on the wire and in watch ERROR events."""
        return failure_status(self.code, self.reason, self.message, self.details)


def failure_status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build a failure ``Status`` object; pure, used by errors and by fault injection."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        status["details"] = details
    return status


def success_status(details: dict[str, Any]) -> dict[str, Any]:
    """The ``Status`` a DELETE returns for resources whose store does not return the deleted object."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def qualified(plural: str, group: str) -> str:
    """The ``plural.group`` name the real server uses in messages (just ``plural`` for the core group)."""
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> StatusError:
    """404 for a missing object, worded as ``lorajobs.loraplane.io "x" not found``."""
    return StatusError(
        "NotFound",
        f'{qualified(plural, group)} "{name}" not found',
        {"name": name, "group": group, "kind": plural},
    )


def already_exists(plural: str, group: str, name: str) -> StatusError:
    """409 AlreadyExists for a create whose name is taken."""
    return StatusError(
        "AlreadyExists",
        f'{qualified(plural, group)} "{name}" already exists',
        {"name": name, "group": group, "kind": plural},
    )


def conflict(plural: str, group: str, name: str) -> StatusError:
    """409 Conflict for a write against a stale resourceVersion (optimistic concurrency)."""
    return StatusError(
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": '
        "the object has been modified; please apply your changes to the latest version and try again",
        {"name": name, "group": group, "kind": plural},
    )


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> StatusError:
    """422 Invalid listing each failed field as the real server does.

    Args:
        kind: the object's kind (the real server names the kind here, not the plural).
        causes: dicts with ``reason`` (``FieldValueInvalid``, ``FieldValueRequired``, ...),
            ``message`` and ``field``.
    """
    parts = [f"{cause['field']}: {cause['message']}" if cause.get("field") else cause["message"] for cause in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return StatusError(
        "Invalid",
        f'{qualified(kind, group)} "{name}" is invalid: {summary}',
        {"name": name, "group": group, "kind": kind, "causes": causes},
    )


def bad_request(message: str) -> StatusError:
    """400 BadRequest for malformed bodies, selectors and parameters."""
    return StatusError("BadRequest", message)
