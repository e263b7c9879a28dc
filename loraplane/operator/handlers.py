"""Kopf handlers: thin glue from Kopf's watches to the shared reconcile loops (`loraplane.control`).

Callers: `cli.run_operator` builds a registry with `build_registry` and hands it to
`kopf.operator`. Each handler reads, calls into `loraplane.control` and returns.

    pods (runtime selector)  ──on.event──▶ RuntimePool ──(readiness changed)──▶ wake every job loop
    lorajobs                 ──on.event──▶ wake that job's loop
                             ──daemon───▶ JobLoop.run (one per job, until deletion)
                             ──on.delete─▶ unload the adapter (the finalizer holds the object)
    startup / cleanup        ──▶ runtime health poll, metrics endpoint, HTTP clients
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from loraplane.clients.kubernetes import api_client
from loraplane.control import loop, pool, quotas
from loraplane.control.runtime_calls import RuntimeCalls
from loraplane.core import scheduling
from loraplane.core.models.v1alpha1.lorajob import FINALIZER, GROUP, PLURAL, VERSION, LoRAJob
from loraplane.core.settings import OperatorSettings
from loraplane.operator import kubeapi, metrics_server

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Where Kopf keeps its own bookkeeping: our finalizer name, annotations under our group."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events say what happened; not every log line
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60


@dataclass
class OperatorRun:
    """What the operator holds while it runs: the shared loops' context, the health poll, /metrics."""

    settings: OperatorSettings
    store_url: str
    kubeconfig: str | None = None
    metrics_port: int | None = None
    clock: Callable[[], datetime] = _utc_now
    backoff_base_s: float | None = None
    ctx: loop.ControlContext | None = None
    _stop: asyncio.Event | None = None
    _poll: asyncio.Task[None] | None = None
    _runner: Any = None  #: the metrics endpoint's aiohttp runner
    _jobs: kubeapi.KubeJobStore | None = None

    async def start(self) -> None:
        calls = RuntimeCalls()
        runtimes = pool.RuntimePool(port=self.settings.runtime_port, client=calls)
        self._jobs = kubeapi.KubeJobStore(await api_client(self.kubeconfig))
        self.ctx = loop.ControlContext(settings=self.settings, store_url=self.store_url, pool=runtimes,
                                       runtime=calls, jobs=self._jobs, clock=self.clock,
                                       quotas=quotas.table(self.settings))
        if self.backoff_base_s is not None:
            self.ctx.backoff_base_s = self.backoff_base_s
        runtimes.on_change(self.ctx.wake_all)
        self._stop = asyncio.Event()
        self._poll = asyncio.create_task(runtimes.poll_forever(self.settings.health_interval_s, self._stop))
        if self.metrics_port:
            self._runner = await metrics_server.start("0.0.0.0", self.metrics_port)

    async def stop(self) -> None:
        if self._stop is not None and self._poll is not None:
            self._stop.set()
            await self._poll
        if self._runner is not None:
            await self._runner.cleanup()
        if self.ctx is not None:
            await self.ctx.runtime.close()
        if self._jobs is not None:
            await self._jobs.close()


def build_registry(
    settings: OperatorSettings,
    *,
    store_url: str,
    kubeconfig: str | None = None,
    metrics_port: int | None = None,
    clock: Callable[[], datetime] = _utc_now,
    backoff_base_s: float | None = None,
) -> kopf.OperatorRegistry:
    """A Kopf registry with every handler of the operator bound to these settings."""
    registry = kopf.OperatorRegistry()
    run = OperatorRun(settings, store_url, kubeconfig, metrics_port, clock, backoff_base_s)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def operator_started(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)
        await run.start()

    @kopf.on.cleanup(registry=registry)
    async def operator_stopping(**_: Any) -> None:
        await run.stop()

    _register_watches(registry, run)
    return registry


def _register_watches(registry: kopf.OperatorRegistry, run: OperatorRun) -> None:
    """Pod events feed the runtime pool; LoRAJob events wake their loop; a daemon per job; the finalizer."""
    labels = {
        k: (kopf.PRESENT if v is None else v)
        for k, v in scheduling.parse_selector(run.settings.runtime_selector).items()
    }

    @kopf.on.event("", "v1", "pods", labels=labels, registry=registry)
    def runtime_pod_event(event: Mapping[str, Any], body: Mapping[str, Any], name: str, **_: Any) -> None:
        if run.ctx is None:
            return
        if event.get("type") == "DELETED":
            run.ctx.pool.pod_gone(name)
        else:
            run.ctx.pool.pod_seen(name, body)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def lorajob_event(uid: str, **_: Any) -> None:
        if run.ctx is not None and uid in run.ctx.wakers:
            run.ctx.wakers[uid].set()

    @kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, registry=registry)
    async def lorajob_daemon(body: kopf.Body, uid: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        assert run.ctx is not None
        await loop.JobLoop(run.ctx, body).run(stopped, uid)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def lorajob_deleted(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        assert run.ctx is not None
        try:
            job = LoRAJob.from_body(dict(body))
        except ValueError:
            return  # an invalid spec was never dispatched
        await loop.JobLoop(run.ctx, body).unload(job)
        run.ctx.pool.unplaced(f"{namespace}/{name}")
        run.ctx.phase_counts.set(f"{namespace}/{name}", None)
