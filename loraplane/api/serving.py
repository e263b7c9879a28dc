"""How the gateway's HTTP server is run: uvicorn, with a deadline on every request's headers.

Callers: `loraplane serve` and `loraplane gateway` build their uvicorn config here.

Design notes
============
uvicorn closes idle keep-alive connections, but a client that opens a connection and sends its
headers slowly (or never) holds it, and its memory, for as long as it likes: thousands of such
connections exhaust the server. `HeaderDeadline` arms a timer when a connection opens and when a
new request begins, and closes the connection if the headers are not complete in time. The body
has its own deadline in the app (`guards.BodyLimit`, answered with a 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from loraplane.core.settings import GatewaySettings


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose request headers are late."""

    #: seconds a request's headers may take, from the connection or the request's first byte
    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app: Any, settings: GatewaySettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn config of a gateway app: its host and port, the header deadline, no access log
    of uvicorn's own."""
    protocol = type("GatewayHttp", (HeaderDeadline,), {"header_timeout_s": settings.header_timeout_s})
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": "warning", "access_log": False,
        "timeout_keep_alive": 75, "http": protocol,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
