"""KubeEmulator: the emulated API server as tests start, fill, fault and stop it.

The emulator runs its aiohttp server on 127.0.0.1 in a background thread with its own
event loop, so synchronous tests, tests with their own loop, and clients in other
threads (Kopf run by ``KopfRunner``) all reach it over real HTTP. Every method below is
safe to call from any thread: calls that touch the objects run on the emulator's loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import datetime
import random
import re
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from .cluster import Cluster
from .faults import ConflictRule, ErrorRule, Faults
from .server import Server

T = TypeVar("T")


class KubeEmulator:
    """An in-process Kubernetes API server for tests.

    Args:
        token: the bearer token clients must present (None: no authentication).
        history_size: watch events kept for resuming; older resume points get 410 Gone.
        bookmark_interval: seconds of quiet after which a bookmark-enabled watch gets a BOOKMARK.
        default_watch_timeout: seconds a watch without ``timeoutSeconds`` stays open.
        namespaces: namespaces that exist from the start.
        clock: the source of timestamps (creationTimestamp, deletionTimestamp).
        seed: seeds uids and generateName suffixes, for reproducible runs.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        history_size: int = 1000,
        bookmark_interval: float = 60.0,
        default_watch_timeout: float = 1800.0,
        namespaces: Iterable[str] = ("default", "kube-system", "kube-public"),
        clock: Callable[[], datetime.datetime] | None = None,
        seed: int | None = None,
    ) -> None:
        self.faults = Faults()  #: armed faults and request counters
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        self.cluster = Cluster(history_size, rng=random.Random(seed), defer=self._defer, **kwargs)
        self.server = Server(self.cluster, self.faults, token, bookmark_interval, default_watch_timeout)
        self.token = token
        self.host = "127.0.0.1"
        self.port = 0  #: the bound port, known after start()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        for namespace in namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL clients connect to (``http://127.0.0.1:<port>``)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> KubeEmulator:
        """Bind a free port and serve from a background thread; returns once requests are accepted."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        self.server.address = f"{self.host}:{self.port}"
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(sock, ready), name="kube-emulator", daemon=True)
        self._thread.start()
        ready.result(timeout=10)
        return self

    def _serve(self, sock: socket.socket, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            # Cancelling handlers of vanished clients ends their watches (and subscriptions) at once.
            self._runner = web.AppRunner(self.server.make_app(), handle_signals=False, shutdown_timeout=1.0,
                                         handler_cancellation=True)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.SockSite(self._runner, sock).start())
            self._loop = loop
            ready.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            self._loop = None
            loop.close()

    def stop(self) -> None:
        """Close every watch, stop serving and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self.drop_watches()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _defer(self, callback: Callable[[], None]) -> None:
        if self._loop is not None:
            self._loop.call_soon(callback)
        else:
            callback()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run fn on the emulator's loop (or directly before start) and return its result or raise its error."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    # -- clients --------------------------------------------------------------------------------

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        """A kubeconfig pointing at this emulator over plain http, with a token user."""
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "emulator-user", "user": user}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator-user",
                                                          "namespace": namespace}}],
            "current-context": "emulator",
        }

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write :meth:`kubeconfig` as YAML to a file and return its path."""
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace)), encoding="utf-8")
        return path

    # -- objects --------------------------------------------------------------------------------

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create an object from a manifest (any registered kind); returns it as stored."""
        def run() -> dict[str, Any]:
            rt = self.cluster.find_kind(manifest.get("apiVersion", ""), manifest.get("kind", ""))
            return self.cluster.create(rt, (manifest.get("metadata") or {}).get("namespace"), manifest)
        return self._call(run)

    def load_manifests(self, path: Path | str) -> list[dict[str, Any]]:
        """Create every object in a YAML file (such as crds/lorajob.yaml), in order."""
        documents = yaml.safe_load_all(Path(path).read_text(encoding="utf-8"))
        return [self.create(document) for document in documents if document]

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object, or None."""
        def run() -> dict[str, Any] | None:
            rt = self.cluster.find_kind(api_version, kind)
            key_ns = (namespace or "") if rt.namespaced else ""
            return self.cluster.store.get(rt.storage_key, key_ns, name)
        return self._call(run)

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Stored objects of one kind (in one namespace, or all)."""
        def run() -> list[dict[str, Any]]:
            rt = self.cluster.find_kind(api_version, kind)
            return self.cluster.list(rt, namespace)[0]
        return self._call(run)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None,
               propagation_policy: str | None = None) -> dict[str, Any]:
        """Delete an object as a DELETE request would (finalizers, garbage collection); returns the answer."""
        def run() -> dict[str, Any]:
            rt = self.cluster.find_kind(api_version, kind)
            options = {"propagationPolicy": propagation_policy} if propagation_policy else {}
            return self.cluster.delete(rt, namespace, name, options)
        return self._call(run)

    def compact(self) -> int:
        """Forget the whole watch history, as etcd compaction does; returns the compacted resourceVersion."""
        def run() -> int:
            store = self.cluster.store
            store.history.clear()
            store.compacted_rv = store.resource_version
            return store.compacted_rv
        return self._call(run)

    # -- faults ---------------------------------------------------------------------------------

    def drop_watches(self) -> int:
        """Close every open watch stream at once; returns how many were open."""
        return self._call(self.cluster.store.close_subscriptions)

    def fail_next_watches(self, count: int = 1) -> None:
        """The next ``count`` watches get one ERROR event with a 410 Gone Status, then end."""
        self.faults.arm_gone(watches=count)

    def fail_next_lists(self, count: int = 1) -> None:
        """The next ``count`` lists answer HTTP 410 Gone (reason Expired)."""
        self.faults.arm_gone(lists=count)

    def conflict_next_writes(self, count: int = 1, *, plural: str | None = None, namespace: str | None = None,
                             name: str | None = None) -> None:
        """The next ``count`` updates/patches of matching objects answer 409 Conflict (a conflict storm)."""
        self.faults.arm_conflict(ConflictRule(count, plural, namespace, name))

    def fail_next_requests(self, count: int = 1, *, code: int = 500, verb: str | None = None,
                           path: str | None = None) -> None:
        """The next ``count`` requests with this Kubernetes verb whose path matches the regex answer ``code``."""
        self.faults.arm_error(ErrorRule(count, code, verb, re.compile(path) if path else None))

    def set_latency(self, seconds: float) -> None:
        """Delay every request by this many seconds (0 to stop)."""
        self.faults.latency = seconds

    def reset_faults(self) -> None:
        """Disarm every fault, drop latency and zero the request counters."""
        self.faults.reset()

    def request_counts(self) -> collections.Counter[tuple[str, str]]:
        """Requests served so far by (Kubernetes verb, URL path)."""
        return self.faults.snapshot_counts()

    def request_count(self, verb: str | None = None, path: str | None = None) -> int:
        """How many requests had this verb and a path matching this regex (None matches any)."""
        pattern = re.compile(path) if path else None
        return sum(count for (req_verb, req_path), count in self.request_counts().items()
                   if (verb is None or verb == req_verb) and (pattern is None or pattern.search(req_path)))
