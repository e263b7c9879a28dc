"""Log setup shared by every component, and the request id that ties one call's lines together.

Callers: the CLIs (`configure`), the gateway's access log (sets `request_id` per request), the
runtime client (sends it on to the runtime as `X-Request-ID`), the runtime's API and executor (set
it again for the op, also on the model thread), so that every line about one call carries its id.

Two formats: `text` (the message, then `request_id=...` when there is one) for people, and `json`
(one object per line: time, level, logger, message, request id, and the access fields) for log
pipelines. No component logs headers or query strings, so keys and signed URLs never reach a log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import time
from typing import Any

#: HTTP header that carries the request id, both ways.
HEADER = "x-request-id"
#: What a caller-supplied request id may look like (else the gateway makes its own).
_VALID = re.compile(r"^[A-Za-z0-9._:-]{8,80}$")
FORMATS = ("text", "json")

#: The request id of the call being handled in this task or thread (None outside one).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("loraplane_request_id", default=None)


def new_request_id() -> str:
    return "req-" + secrets.token_hex(8)


def accept_request_id(value: str | None) -> str:
    """A caller's id when it is a plain token, else a new one. Pure but for the randomness."""
    return value if value is not None and _VALID.match(value) else new_request_id()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = record.getMessage()
        rid = getattr(record, "request_id", None)
        if rid and "request_id=" not in line:
            line += f" request_id={rid}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            body["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            body.update(fields)
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Root logging for a CLI: `level` (debug, info, warning, error) and `fmt` (text or json) on stderr."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; accepted: {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def reason_of(body: bytes) -> str:
    """The message of an error answer (`error` or `detail`), else its first bytes. Pure."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(parsed, dict):
        for key in ("error", "detail"):
            if isinstance(parsed.get(key), str):
                return parsed[key]
    return str(parsed)[:200]
