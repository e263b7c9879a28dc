"""The gateway's Kubernetes control plane: LoRAJobs as custom resources, read from a watch.

Callers: `loraplane gateway` (`loraplane.api.cli`) builds one with `from_settings`; the gateway
uses it through `loraplane.core.controlplane.ControlPlane`.

Design notes
============
`runtime_for` runs on every per-step call, so it must never reach the API server: one
list-then-watch task keeps every job of the namespace in a dict, and the gateway reads that. A
watch that ends is resumed from the last resourceVersion; a 410 Gone (history compacted) or any
other error relists. `wait_running` waits on an asyncio.Condition that the watch notifies.
Runtime pods for `runtimes_for_model` are listed at most once per `cache_s` and asked for their
/readyz, since the base model a pod serves is only known to the runtime itself.

The client is created lazily on first use, so the object can be built before the event loop
runs (the CLI builds it before uvicorn starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from loraplane.clients.kubernetes import api_client
from loraplane.clients.runtime import RuntimeClients
from loraplane.core import errors, manifests, phases, scheduling
from loraplane.core.models.v1alpha1.lorajob import (
    GROUP,
    KIND,
    PLURAL,
    SESSION_LABEL,
    TENANT_LABEL,
    VERSION,
    LoRAJob,
    Phase,
    RuntimeRef,
)
from loraplane.core.runtime_ops import job_adapter_id
from loraplane.core.settings import Settings

log = logging.getLogger(__name__)


def _refusal(exc: ApiException, name: str) -> errors.LoraplaneError:
    """The API server's answer to a create or replace, as the error a user can act on. Pure."""
    if exc.status in (400, 422):
        detail = exc.body
        with contextlib.suppress(ValueError, TypeError):
            detail = json.loads(exc.body).get("message") or exc.body
        return errors.InvalidInput(f"the cluster refused job {name!r}: {detail}")
    if exc.status == 403:
        return errors.ServerError(f"the gateway may not write job {name!r}: {exc.reason}")
    return errors.ServerError(f"writing job {name!r}: {exc.status} {exc.reason}")


def job_manifest(job: LoRAJob, namespace: str) -> dict[str, Any]:
    """The object to create: the job in `namespace`, labelled with its tenant and session. Pure."""
    body = job.to_body()
    body.pop("status", None)
    meta = {k: v for k, v in body["metadata"].items() if k in {"name", "labels", "annotations"}}
    meta["namespace"] = namespace
    labels = dict(meta.get("labels") or {})
    labels[TENANT_LABEL] = job.spec.tenant
    if job.spec.session is not None:
        labels[SESSION_LABEL] = job.spec.session.session_id.replace(":", "-")
    meta["labels"] = labels
    body["metadata"] = meta
    return body


class KubeControlPlane:
    """`ControlPlane` over LoRAJob custom resources in one namespace."""

    def __init__(
        self,
        namespace: str = "default",
        *,
        runtime_selector: str = "loraplane.dev/component=runtime",
        runtime_port: int = 8001,
        kubeconfig: str | None = None,
        cache_s: float = 5.0,
    ) -> None:
        self.namespace = namespace
        self.runtime_selector = runtime_selector
        self.runtime_port = runtime_port
        self.kubeconfig = kubeconfig
        self.cache_s = cache_s
        self._jobs: dict[str, LoRAJob] = {}  #: name -> job, fed by the watch
        self._synced = asyncio.Event()  #: set once the first list has filled `_jobs`
        self._changed: asyncio.Condition | None = None  #: notified on every watch event
        self._api_client: client.ApiClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._runtimes: tuple[float, list[tuple[RuntimeRef, str | None]]] | None = None  #: (time, [(ref, model)])
        self._start_lock: asyncio.Lock | None = None
        self._probes = RuntimeClients(timeout=5.0)  #: /readyz of runtime pods, for runtimes_for_model

    @classmethod
    def from_settings(cls, settings: Settings) -> KubeControlPlane:
        return cls(
            settings.gateway.namespace,
            runtime_selector=settings.operator.runtime_selector,
            runtime_port=settings.operator.runtime_port,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def _start(self) -> client.CustomObjectsApi:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._api_client is None:
                self._api_client = await api_client(self.kubeconfig)
                self._changed = asyncio.Condition()
                self._watcher = asyncio.create_task(self._watch_forever(), name="lorajob-watch")
        return client.CustomObjectsApi(self._api_client)

    async def _ready(self) -> client.CustomObjectsApi:
        api = await self._start()
        await self._synced.wait()
        return api

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._api_client is not None:
            await self._api_client.close()
            self._api_client = None
        await self._probes.close()

    # -- the watch ------------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        api = client.CustomObjectsApi(self._api_client)
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    listed = await api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
                    self._replace(listed.get("items", []))
                    rv = listed["metadata"]["resourceVersion"]
                async with watch.Watch() as w:
                    stream = w.stream(
                        api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                        resource_version=rv, timeout_seconds=300, allow_watch_bookmarks=True,
                    )
                    async for event in stream:
                        obj = event["object"]
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        await self._apply(event["type"], obj)
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("LoRAJob watch failed (%s); relisting", exc.status)
                    await asyncio.sleep(0.5)
                rv = None
            except Exception as exc:  # connection drops: resume from the last version
                log.info("LoRAJob watch ended (%s); resuming", exc)
                await asyncio.sleep(0.2)

    def _replace(self, items: list[dict[str, Any]]) -> None:
        self._jobs = {}
        for item in items:
            self._put(item)
        self._synced.set()
        self._notify()

    def _put(self, obj: dict[str, Any]) -> None:
        try:
            job = LoRAJob.from_body(obj)
        except ValueError as exc:
            log.warning("ignoring LoRAJob %s: %s", obj.get("metadata", {}).get("name"), exc)
            return
        self._jobs[job.metadata.name] = job

    async def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self._jobs.pop(obj.get("metadata", {}).get("name", ""), None)
        else:
            self._put(obj)
        self._notify()

    def _notify(self) -> None:
        changed = self._changed
        if changed is None:
            return

        async def notify() -> None:
            async with changed:
                changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    # -- ControlPlane ---------------------------------------------------------------------------

    async def create_job(self, job: LoRAJob) -> LoRAJob:
        api = await self._ready()
        manifest = job_manifest(job, self.namespace)
        try:
            created = await api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, manifest)
        except ApiException as exc:
            if exc.status == 409:
                existing = await self._get(api, job.metadata.name)
                if existing is not None and existing.spec == job.spec:
                    return existing
                raise errors.Conflict(
                    f"job {job.metadata.name!r} exists with another spec", field="model_id"
                ) from exc
            if exc.status in (400, 422):
                raise errors.InvalidInput(f"the cluster refused job {job.metadata.name!r}: {exc.body}") from exc
            raise errors.ServerError(f"creating job {job.metadata.name!r}: {exc.status} {exc.reason}") from exc
        created_job = LoRAJob.from_body(created)
        self._jobs.setdefault(created_job.metadata.name, created_job)
        return created_job

    async def _get(self, api: client.CustomObjectsApi, name: str) -> LoRAJob | None:
        try:
            return LoRAJob.from_body(await api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise errors.ServerError(f"reading job {name!r}: {exc.status} {exc.reason}") from exc

    async def apply_job(self, manifest: dict[str, Any], *, tenant: str) -> tuple[LoRAJob, bool]:
        job = manifests.validated(manifest, namespace=self.namespace)
        if job.spec.tenant != tenant:
            raise errors.Forbidden(f"spec.tenant is {job.spec.tenant!r}, but your API key is tenant {tenant!r}",
                                   field="spec.tenant")
        api = await self._ready()
        body = job_manifest(job, self.namespace)
        try:
            created = await api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
            return LoRAJob.from_body(created), True
        except ApiException as exc:
            if exc.status != 409:
                raise _refusal(exc, job.metadata.name) from exc
        for _ in range(3):  # a status write between our read and our replace is a 409: read again
            current = await api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, job.metadata.name)
            if (current.get("spec") or {}).get("tenant") != tenant:
                raise errors.Conflict(f"job {job.metadata.name!r} belongs to another tenant; choose another name",
                                      field="metadata.name")
            current["spec"] = body["spec"]
            current["metadata"]["labels"] = body["metadata"]["labels"]
            current["metadata"]["annotations"] = body["metadata"].get("annotations") or {}
            try:
                stored = await api.replace_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, job.metadata.name, current)
                return LoRAJob.from_body(stored), False
            except ApiException as exc:
                if exc.status != 409:
                    raise _refusal(exc, job.metadata.name) from exc
        raise errors.CapacityError(f"job {job.metadata.name!r} keeps changing; apply it again")

    async def job_events(self, name: str) -> list[dict[str, Any]]:
        await self._start()
        core = client.CoreV1Api(self._api_client)
        try:
            listed = await core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.kind={KIND},involvedObject.name={name}")
        except ApiException as exc:
            raise errors.ServerError(f"reading the events of job {name!r}: {exc.status} {exc.reason}") from exc
        out = []
        for event in listed.items:
            when = event.last_timestamp or event.event_time or event.first_timestamp
            out.append({"lastTimestamp": when.isoformat().replace("+00:00", "Z") if when else None,
                        "type": event.type, "reason": event.reason, "message": event.message or ""})
        return sorted(out, key=lambda e: e["lastTimestamp"] or "")

    async def get_job(self, name: str) -> LoRAJob | None:
        await self._ready()
        return self._jobs.get(name)

    async def list_jobs(self, *, tenant: str | None = None) -> list[LoRAJob]:
        await self._ready()
        return [j for j in self._jobs.values() if tenant is None or j.spec.tenant == tenant]

    async def delete_job(self, name: str) -> None:
        api = await self._ready()
        try:
            await api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise errors.ServerError(f"deleting job {name!r}: {exc.status} {exc.reason}") from exc

    async def wait_running(self, name: str, timeout: float) -> LoRAJob:
        await self._ready()
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while True:
                job = self._jobs.get(name)
                if job is not None and job.status.phase == Phase.RUNNING and job.status.runtime is not None:
                    return job
                failure = phases.start_failure(job) if job is not None else None
                if failure is not None:
                    raise errors.UserError(f"job {name!r} failed: {failure}")
                left = deadline - loop.time()
                if left <= 0:
                    why = job.status.message if job is not None else "the job does not exist"
                    raise errors.CapacityError(f"job {name!r} is not running after {timeout:.0f}s: {why}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    def adapter_id(self, name: str) -> str:
        """The operator creates a job's adapter under `<namespace>.<name>`."""
        return job_adapter_id(self.namespace, name)

    def runtime_for(self, name: str) -> RuntimeRef | None:
        job = self._jobs.get(name)
        if job is None or job.status.phase != Phase.RUNNING:
            return None
        return job.status.runtime

    async def runtimes_for_model(self, base_model: str) -> list[RuntimeRef]:
        now = time.monotonic()
        if self._runtimes is None or now - self._runtimes[0] > self.cache_s:
            self._runtimes = (now, await self._probe_runtimes())
        return [ref for ref, model in self._runtimes[1] if model == base_model]

    async def _probe_runtimes(self) -> list[tuple[RuntimeRef, str | None]]:
        await self._start()
        core = client.CoreV1Api(self._api_client)
        pods = await core.list_namespaced_pod(self.namespace, label_selector=self.runtime_selector)
        found = []
        for pod in self._api_client.sanitize_for_serialization(pods.items) if self._api_client else []:
            address = scheduling.pod_address(pod, self.runtime_port)
            if address and scheduling.pod_is_ready(pod):
                try:
                    health = await self._probes(address).readiness()
                except errors.LoraplaneError:
                    continue
                if health.get("ready"):
                    found.append((RuntimeRef(pod=pod["metadata"]["name"], address=address), health.get("base_model")))
        return found
