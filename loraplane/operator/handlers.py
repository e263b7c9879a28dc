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
from datetime import UTC, datetime
from typing import Any

import kopf

from loraplane.clients.kubernetes import api_client
from loraplane.control import loop, pool
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
    operator_settings = settings
    registry = kopf.OperatorRegistry()
    state: dict[str, Any] = {}  #: "ctx" -> OperatorContext, "tasks" -> background tasks, "runner"

    def ctx() -> loop.ControlContext:
        return state["ctx"]

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def operator_started(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)
        calls = RuntimeCalls()
        runtimes = pool.RuntimePool(port=operator_settings.runtime_port, client=calls)
        jobs = kubeapi.KubeJobStore(await api_client(kubeconfig))
        context = loop.ControlContext(
            settings=operator_settings,
            store_url=store_url,
            pool=runtimes,
            runtime=calls,
            jobs=jobs,
            clock=clock,
        )
        if backoff_base_s is not None:
            context.backoff_base_s = backoff_base_s
        runtimes.on_change(context.wake_all)
        state["ctx"] = context
        state["stop"] = asyncio.Event()
        state["poll"] = asyncio.create_task(
            runtimes.poll_forever(operator_settings.health_interval_s, state["stop"])
        )
        if metrics_port:
            state["runner"] = await metrics_server.start("0.0.0.0", metrics_port)

    @kopf.on.cleanup(registry=registry)
    async def operator_stopping(**_: Any) -> None:
        if "stop" in state:
            state["stop"].set()
            await state["poll"]
        if "runner" in state:
            await state["runner"].cleanup()
        if "ctx" in state:
            await state["ctx"].runtime.close()
            await state["ctx"].jobs.close()

    labels = {
        k: (kopf.PRESENT if v is None else v)
        for k, v in scheduling.parse_selector(settings.runtime_selector).items()
    }

    @kopf.on.event("", "v1", "pods", labels=labels, registry=registry)
    def runtime_pod_event(event: Mapping[str, Any], body: Mapping[str, Any], name: str, **_: Any) -> None:
        if "ctx" not in state:
            return
        if event.get("type") == "DELETED":
            ctx().pool.pod_gone(name)
        else:
            ctx().pool.pod_seen(name, body)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def lorajob_event(uid: str, **_: Any) -> None:
        if "ctx" in state and uid in ctx().wakers:
            ctx().wakers[uid].set()

    @kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, registry=registry)
    async def lorajob_daemon(body: kopf.Body, uid: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await loop.JobLoop(ctx(), body).run(stopped, uid)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def lorajob_deleted(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        job_loop = loop.JobLoop(ctx(), body)
        try:
            job = LoRAJob.from_body(dict(body))
        except ValueError:
            return  # an invalid spec was never dispatched
        await job_loop.unload(job)
        ctx().pool.unplaced(f"{namespace}/{name}")
        ctx().phase_counts.set(f"{namespace}/{name}", None)

    return registry
