"""`loraplane gateway`: the Tinker gateway in front of a Kubernetes control plane.

The same app as `loraplane serve`, over a `KubeControlPlane`: LoRAJobs
are custom resources (`loraplane.api.kube.KubeControlPlane`, imported only here and only when this
command runs) and runtimes are pods. Flags override the `LORAPLANE_*` environment.

`listen` is shared with `loraplane serve`: it binds the port before anything slow starts (a port
in use is one line at once), logs the URL only once the socket listens, and turns a failed start
of the app into the exception that `loraplane.cli` reports in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any

from loraplane.api.auth import load_keys, split_inline
from loraplane.cli import port
from loraplane.clients import artifact_store
from loraplane.core import artifacts, errors, logs, quotas
from loraplane.core.settings import GatewaySettings, Settings

log = logging.getLogger("loraplane")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (LORAPLANE_GATEWAY__HOST)")
    parser.add_argument("--port", type=port, help="port (LORAPLANE_GATEWAY__PORT)")
    parser.add_argument("--store", help="artifact store URL (LORAPLANE_STORE__URL)")
    parser.add_argument("--api-keys-file", help="file of tenant=key lines (LORAPLANE_GATEWAY__API_KEYS_FILE)")
    parser.add_argument("--namespace", help="namespace of LoRAJobs (LORAPLANE_GATEWAY__NAMESPACE)")
    parser.add_argument("--log-level", help="debug, info, warning (LORAPLANE_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=logs.FORMATS, help="text or json (LORAPLANE_LOG_FORMAT)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="a base model name to announce in get_server_capabilities (repeatable)")


def _control_plane(settings: Settings) -> Any:
    from loraplane.api import kube

    return kube.KubeControlPlane.from_settings(settings)


def run(args: argparse.Namespace) -> int:
    from loraplane.api import limits
    from loraplane.api.app import create_app
    from loraplane.api.dataplane import Runtimes
    from loraplane.api.gateway import Gateway

    settings = Settings()
    logs.configure(getattr(args, "log_level", None) or settings.log_level,
                   getattr(args, "log_format", None) or settings.log_format)
    gw_settings = settings.gateway.model_copy(update={
        k: v for k, v in {"host": args.host, "port": args.port, "api_keys_file": args.api_keys_file,
                          "namespace": args.namespace}.items() if v is not None
    })
    settings = settings.model_copy(update={"gateway": gw_settings})
    try:
        keys = load_keys(inline=split_inline(gw_settings.api_keys),
                         files=[f for f in [gw_settings.api_keys_file] if f])
    except errors.LoraplaneError as exc:
        raise errors.InvalidInput(exc.message) from None
    if len(keys) == 0:
        raise errors.InvalidInput("no API key configured; set LORAPLANE_GATEWAY__API_KEYS_FILE "
                                  "(tenant=key or tenant=sha256:<hex> lines) or pass --api-keys-file.")
    store = artifact_store.open_store(args.store or settings.store.url or artifacts.default_store_url())
    gateway = Gateway(
        control_plane=_control_plane(settings), runtimes=Runtimes(timeout_s=gw_settings.long_poll_s + 60),
        store=store, models=list(args.model), long_poll_s=gw_settings.long_poll_s,
        job_start_timeout_s=gw_settings.job_start_timeout_s,
        max_request_bytes=gw_settings.max_request_bytes, sample_caps=limits.caps_from(gw_settings),
        quotas=quotas.QuotaTable.build(gw_settings.tenant_defaults, gw_settings.tenant_quotas, keys.overrides),
    )
    return listen(create_app(gateway, keys, settings=gw_settings), gw_settings,
                  ready="loraplane gateway at http://{host}:{port}")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (0 = any free port). Raises InvalidInput naming what to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise errors.InvalidInput(f"--host {host!r}: {exc.strerror}; use an address of this machine, "
                                  "e.g. 127.0.0.1 or 0.0.0.0", field="host") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reasons = {
            errno.EADDRINUSE: f"port {port} on {host} is already in use; stop what listens there or pass "
                              "--port N (0 = any free port)",
            errno.EACCES: f"port {port} needs privileges this user lacks; use a port above 1023",
            errno.EADDRNOTAVAIL: f"--host {host!r} is not an address of this machine; use 127.0.0.1 or 0.0.0.0",
        }
        raise errors.InvalidInput(reasons.get(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}"),
                                  field="port") from None
    return sock


class StartupGuard:
    """ASGI wrapper that keeps start and stop free of uvicorn's tracebacks and error lines.

    Start: uvicorn logs the text of `lifespan.startup.failed` (Starlette puts the whole traceback
    there); the guard blanks it and keeps the exception, which `listen` raises once uvicorn has
    stopped. Stop: requests still open (long polls hold one for up to 30 s) would be cancelled by
    uvicorn after its grace period, each logged as an error; `drain` gives them `grace_s` to end,
    then ends the rest itself with a 503, which the SDK retries against the next server.
    """

    def __init__(self, app: Any, *, grace_s: float = 3.0) -> None:
        self.app = app
        self.grace_s = grace_s
        #: the exception that ended the app's start, if one did
        self.error: Exception | None = None
        #: set when the server begins to stop
        self.stopping = False
        #: tasks of the HTTP requests in progress
        self._open: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            if not started and scope["type"] == "http":
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.start", "status": 503,
                                "headers": [(b"content-type", b"application/json")]})
                    await send({"type": "http.response.body",
                                "body": b'{"detail": "the server is stopping; retry", "category": "server"}'})
        finally:
            self._open.discard(task)

    async def drain(self) -> None:
        """Stop: let open requests end within the grace period, then end the others with a 503."""
        self.stopping = True
        deadline = asyncio.get_running_loop().time() + self.grace_s
        while self._open and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._open):
            task.cancel()

    async def _lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_quietly(message: Any) -> None:
            if message["type"] == "lifespan.startup.failed":
                message = {"type": message["type"], "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, send_quietly)
        except Exception as exc:
            self.error = exc


def listen(app: Any, settings: GatewaySettings, *, ready: str) -> int:
    """Serve `app` on the settings' host:port until stopped; log `ready` (format fields host, port)
    once listening. uvicorn runs as `serving.uvicorn_config` sets it up (the header deadline)."""
    import uvicorn

    from loraplane.api import serving

    sock = bind(settings.host, settings.port)
    guard = StartupGuard(app)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.servers:
                bound_host, bound_port = self.servers[0].sockets[0].getsockname()[:2]
                log.info(ready.format(host=bound_host, port=bound_port))

        async def shutdown(self, sockets: Any = None) -> None:
            await guard.drain()
            await super().shutdown(sockets=sockets)

    # In-flight long polls would hold a graceful stop for up to their 30 s; clients re-poll elsewhere.
    config = serving.uvicorn_config(guard, settings, timeout_graceful_shutdown=5)
    try:
        _Server(config).run(sockets=[sock])
    finally:
        sock.close()
    if guard.error is not None:
        raise guard.error
    return 0
