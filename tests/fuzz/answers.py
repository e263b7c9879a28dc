"""What every answer to a hostile request must look like, and how a failure explains itself.

Callers: the fuzz test modules. A failure message carries the request, the answer, whether the
server is still up (and whether the memory watchdog killed it), and the server's log since the
request was sent, which holds the traceback of a 5xx.
"""

from __future__ import annotations

import subprocess

import httpx

from tests.fuzz import served

#: headers of a hostile request: its own connection, so a connection the server drops after
#: answering one case (a 500 escaping the app) is not blamed on the next case
ONE_SHOT = {"connection": "close"}


def explain(server: served.ServedGateway, what: str, log_from: int, *, dropped: bool = False) -> str:
    if dropped and server.alive():
        try:  # a dropped connection may be the server being killed right now
            server.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    killed = (f"; the watchdog killed it at {server.killed_at_rss_bytes / 2**20:.0f} MiB resident"
              if server.killed_at_rss_bytes else "")
    dead = "" if server.alive() else f"; the server is DOWN (exit {server.proc.returncode}){killed}"
    return f"{what}{dead}\nserver log:\n{server.log_since(log_from)[-3000:]}"


def send(call: object) -> httpx.Response | Exception:
    """Run `call()` (an HTTP request); a dropped connection or a timeout is returned, not raised."""
    try:
        return call()  # type: ignore[operator]
    except httpx.HTTPError as exc:
        return exc


def assert_json_error(server: served.ServedGateway, response: httpx.Response | Exception,
                      statuses: tuple[int, ...], what: str, log_from: int, *, field: str | None = None) -> None:
    """An answer with one of `statuses`, JSON with `detail` and `error`, naming the bad field
    (`field`, when given, must occur in it)."""
    assert not isinstance(response, Exception), explain(server, f"{what}: no answer ({response!r})", log_from, dropped=True)
    status, text = response.status_code, response.text[:300]
    assert status < 500, explain(server, f"{what}: {status} {text}", log_from)
    assert status in statuses, explain(server, f"{what}: expected {statuses}, got {status} {text}", log_from)
    assert response.headers.get("content-type", "").startswith("application/json"), f"{what}: not JSON: {text}"
    body = response.json()
    assert body.get("detail") and body.get("error"), f"{what}: error answer without detail/error: {body}"
    assert body.get("field"), f"{what}: error answer does not name the field: {body}"
    if field is not None:
        assert field in str(body["field"]), f"{what}: expected the field {field!r} to be named, got {body}"
