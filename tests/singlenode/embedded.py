"""Single-node mode's control plane in a thread, driven like the operator tests drive a cluster.

`EmbeddedCluster` has the methods of `tests/k8s/cluster.Cluster` that the life-cycle scenarios
use (create, add_pod, delete_pod, status, wait_phase, patch_spec, delete_job, events), over an
`EmbeddedControlPlane` with its SQLite job store, so one scenario runs against both modes
(tests/k8s/test_lifecycle_both_modes.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from loraplane.core.manifests import validated
from loraplane.core.models.v1alpha1 import LoRAJob
from loraplane.core.settings import OperatorSettings
from loraplane.singlenode.controlplane import NAMESPACE, EmbeddedControlPlane
from loraplane.singlenode.jobstore import SqliteJobStore, merge_patch
from tests.operator import harness
from tests.operator.harness import FAST

T = TypeVar("T")


class EmbeddedCluster:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cp: EmbeddedControlPlane | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pods: dict[str, str] = {}  #: runtime name -> address, registered before or while running
        self._reader: SqliteJobStore | None = None  #: the tests' own connection, for reads

    def _read(self) -> SqliteJobStore:
        if self._reader is None:
            self._reader = SqliteJobStore(self.data_dir / "jobs.sqlite")
        return self._reader

    # -- the control plane's life -----------------------------------------------------------------
    @contextmanager
    def running(self, store_url: str, settings: OperatorSettings = FAST,
                backoff_base_s: float | None = None) -> Iterator[None]:
        """`loraplane serve`'s control plane on a loop of its own until the block ends."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        self._loop = loop
        try:
            self.cp = self._call(self._start(store_url, settings, backoff_base_s))
            yield
        finally:
            if self.cp is not None:
                self._call(self.cp.close())
            self.cp = None
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = None

    async def _start(self, store_url: str, settings: OperatorSettings,
                     backoff_base_s: float | None) -> EmbeddedControlPlane:
        cp = EmbeddedControlPlane(SqliteJobStore(self.data_dir / "jobs.sqlite"), [], store_url=store_url,
                                  settings=settings)
        if backoff_base_s is not None:
            cp.ctx.backoff_base_s = backoff_base_s
        await cp.start()
        for name, address in self._pods.items():
            cp.pool.runtime_seen(name, address)
        return cp

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "the control plane is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _store(self) -> SqliteJobStore:
        assert self.cp is not None, "the control plane is not running"
        return self.cp.jobs

    # -- what the scenarios do --------------------------------------------------------------------
    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        job = validated(manifest, namespace=NAMESPACE)

        async def create() -> dict[str, Any]:
            return self._store().create(job)

        return self._call(create())

    def add_pod(self, manifest: dict[str, Any]) -> None:
        name, address = manifest["metadata"]["name"], manifest["metadata"]["annotations"]["loraplane.dev/runtime-url"]
        self._pods[name] = address
        if self.cp is not None:
            self._loop.call_soon_threadsafe(self.cp.pool.runtime_seen, name, address)  # type: ignore[union-attr]

    def delete_pod(self, name: str) -> None:
        self._pods.pop(name, None)
        if self.cp is not None:
            self._loop.call_soon_threadsafe(self.cp.pool.pod_gone, name)  # type: ignore[union-attr]

    def job(self, name: str) -> dict[str, Any] | None:
        return self._read().get(NAMESPACE, name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.job(name) or {}).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 15.0) -> dict[str, Any]:
        return harness.wait_phase(self.status, name, phase, timeout)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        async def patch() -> None:
            store = self._store()
            body = store.get(NAMESPACE, name)
            assert body is not None, name
            store.update(LoRAJob.from_body({**body, "spec": merge_patch(body["spec"], spec)}))

        self._call(patch())

    def delete_job(self, name: str) -> None:
        assert self.cp is not None
        self._call(self.cp.delete_job(name))

    def events(self, name: str) -> list[dict[str, Any]]:
        return self._read().events(NAMESPACE, name)
