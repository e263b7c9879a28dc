"""EmbeddedControlPlane: LoRAJobs without Kubernetes, for `loraplane serve`.

Callers: `singlenode.cli` builds it and hands it to the gateway, which uses it through
`loraplane.core.controlplane.ControlPlane` exactly as it uses the Kubernetes one.

Design notes
============
* Jobs are the same `LoRAJob` objects, kept in a dict and persisted as JSON under
  `<store>/jobs/<name>.json`, so `kubectl`-style inspection is a look at the store and a restart
  knows what existed. Status (phase, conditions, runtime) is written here alone.
* Placement uses `loraplane.core.scheduling.place`, the operator's own decision, over the runtimes
  this process serves (one per base model).
* Dispatch talks to the runtime's internal API (docs/runtime-api.md) over HTTP like the operator
  does, through the same transport the gateway uses (in process in single-node mode). It runs in a
  background task, so `create_job` returns at once and `wait_running` waits on an event.
* A job that was Running when the process stopped lost its live adapter (weights and optimizer
  since the last save live only in the runtime): on start it is marked Failed with a message that
  says so, rather than silently restarted from scratch. Checkpoints are untouched and resumable.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from loraplane.core import artifacts, errors, scheduling
from loraplane.core.models.v1alpha1 import Condition, LoRAJob, Phase, RuntimeRef
from loraplane.core.models.v1alpha1.lorajob import TENANT_LABEL, TERMINAL_PHASES
from loraplane.core.runtime_client import RuntimeClient
from loraplane.core.runtime_ops import job_adapter_id

log = logging.getLogger(__name__)


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ServedRuntime:
    """One in-process runtime: its name, the address its API answers on, and its base model."""

    pod: str
    address: str
    base_model: str


def resume_source(store_url: str, path: str) -> str:
    """`spec.resumeFrom.path` (a tinker:// path or a store URL) -> the store URL to load. Pure."""
    if path.startswith(artifacts.TINKER_SCHEME):
        return artifacts.checkpoint_url(store_url, artifacts.parse_tinker_path(path, field="spec.resumeFrom.path"))
    return path


def with_phase(job: LoRAJob, phase: Phase, *, reason: str, message: str, now: str,
               runtime: RuntimeRef | None = None) -> LoRAJob:
    """A copy of `job` in `phase`, with its condition of that name updated. Pure; called by dispatch."""
    status = job.status.model_copy(deep=True)
    status.phase = phase
    status.message = message
    status.runtime = runtime if phase in (Phase.RUNNING, Phase.SCHEDULED) else None
    if phase == Phase.RUNNING and status.start_time is None:
        status.start_time = now
    if phase in TERMINAL_PHASES:
        status.completion_time = now
    kept = [c for c in status.conditions if c.type != phase.value]
    kept.append(Condition(type=phase.value, status="True", reason=reason, message=message, last_transition_time=now))
    status.conditions = kept
    return job.model_copy(update={"status": status})


class EmbeddedControlPlane:
    def __init__(
        self,
        store: artifacts.ArtifactStore,
        runtimes: list[ServedRuntime],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], str] = utcnow,
    ) -> None:
        self.store = store
        self.runtimes = list(runtimes)
        self.clock = clock
        self._transport = transport
        #: runtime address -> its client
        self._clients: dict[str, RuntimeClient] = {}
        #: job name -> job
        self._jobs: dict[str, LoRAJob] = {}
        #: job name -> set when the job leaves Pending/Scheduled
        self._settled: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- persistence ----------------------------------------------------------------------------
    def load(self) -> None:
        """Read the jobs of a previous run; live adapters did not survive it (see the module notes)."""
        for body in self.store.records("jobs"):
            try:
                job = LoRAJob.from_body(body)
            except ValueError:
                log.warning("ignoring an unreadable job record: %s", body.get("metadata"))
                continue
            if job.status.phase not in TERMINAL_PHASES:
                job = with_phase(job, Phase.FAILED, reason="ServerRestarted", now=self.clock(),
                                 message="loraplane serve restarted; resume from a checkpoint to continue")
                self._save(job)
            self._jobs[job.metadata.name] = job
            self._event(job.metadata.name).set()

    def _save(self, job: LoRAJob) -> None:
        self._jobs[job.metadata.name] = job
        self.store.write_json(artifacts.job_record_url(self.store.url, job.metadata.name), job.to_body())

    def _event(self, name: str) -> asyncio.Event:
        return self._settled.setdefault(name, asyncio.Event())

    # -- ControlPlane ---------------------------------------------------------------------------
    async def create_job(self, job: LoRAJob) -> LoRAJob:
        name = job.metadata.name
        existing = self._jobs.get(name)
        if existing is not None and existing.status.phase not in TERMINAL_PHASES:
            if existing.spec != job.spec:
                raise errors.Conflict(f"job {name!r} exists with another spec", field="metadata.name")
            return existing
        job = job.model_copy(update={"status": type(job.status)()})
        job.metadata.creationTimestamp = self.clock()
        self._settled[name] = asyncio.Event()
        self._save(job)
        task = asyncio.create_task(self._dispatch(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def get_job(self, name: str) -> LoRAJob | None:
        return self._jobs.get(name)

    async def list_jobs(self, *, tenant: str | None = None) -> list[LoRAJob]:
        return [j for j in self._jobs.values() if tenant is None or j.metadata.labels.get(TENANT_LABEL) == tenant]

    async def delete_job(self, name: str) -> None:
        job = self._jobs.pop(name, None)
        self._settled.pop(name, None)
        self.store.delete(artifacts.job_record_url(self.store.url, name))
        if job is not None and job.status.runtime is not None:
            try:
                await self._client(job.status.runtime.address).delete_adapter(name)
            except errors.LoraplaneError as exc:
                log.warning("could not unload adapter %s: %s", name, exc.message)

    async def wait_running(self, name: str, timeout: float) -> LoRAJob:
        event = self._settled.get(name)
        if event is None or name not in self._jobs:
            raise errors.NotFound(f"unknown job {name!r}")
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError as exc:
            raise errors.CapacityError(f"job {name!r} is not running yet") from exc
        job = self._jobs.get(name)
        if job is None:
            raise errors.NotFound(f"job {name!r} was deleted")
        if job.status.phase != Phase.RUNNING:
            raise errors.UserError(job.status.message or f"job {name!r} is {job.status.phase.value}")
        return job

    def adapter_id(self, name: str) -> str:
        """Jobs here have no namespace: the adapter is named after the job."""
        return job_adapter_id(None, name)

    def runtime_for(self, name: str) -> RuntimeRef | None:
        job = self._jobs.get(name)
        return job.status.runtime if job is not None and job.status.phase == Phase.RUNNING else None

    async def runtimes_for_model(self, base_model: str) -> list[RuntimeRef]:
        return [RuntimeRef(pod=r.pod, address=r.address) for r in self.runtimes if r.base_model == base_model]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, address: str) -> RuntimeClient:
        if address not in self._clients:
            # Loading a model's adapter state can take a while; the dispatch task waits for it.
            self._clients[address] = RuntimeClient(address, transport=self._transport, timeout=600.0)
        return self._clients[address]

    # -- dispatch -------------------------------------------------------------------------------
    async def _dispatch(self, name: str) -> None:
        job = self._jobs[name]
        try:
            candidates = [
                scheduling.RuntimeCandidate(pod=r.pod, address=r.address, base_model=r.base_model, ready=True,
                                            adapters=sum(1 for j in self._jobs.values() if j.status.runtime
                                                         and j.status.runtime.pod == r.pod),
                                            free_slots=1 << 20)
                for r in self.runtimes
            ]
            placement = scheduling.place(job.spec.base_model, candidates)
            if placement.runtime is None:
                raise errors.InvalidInput(placement.message, field="spec.baseModel")
            ref = RuntimeRef(pod=placement.runtime.pod, address=placement.runtime.address)
            job = with_phase(job, Phase.SCHEDULED, reason=placement.reason.value, message=placement.message,
                             now=self.clock(), runtime=ref)
            self._save(job)
            await self._create_adapter(job, ref)
            if name not in self._jobs:  # deleted while its adapter was being created: unload it again
                await self._client(ref.address).delete_adapter(name)
                return
            job = with_phase(self._jobs[name], Phase.RUNNING, reason="Dispatched", now=self.clock(), runtime=ref,
                             message=f"adapter live on {ref.pod}")
            self._save(job)
        except errors.LoraplaneError as exc:
            if name in self._jobs:
                self._save(with_phase(self._jobs[name], Phase.FAILED, reason=type(exc).__name__,
                                      message=exc.message, now=self.clock()))
        except Exception as exc:  # a dispatch bug must fail the job, not leave it pending forever
            log.exception("dispatch of %s failed", name)
            if name in self._jobs:
                self._save(with_phase(self._jobs[name], Phase.FAILED, reason="DispatchError",
                                      message=f"{type(exc).__name__}: {exc}", now=self.clock()))
        finally:
            if name in self._settled:
                self._settled[name].set()

    async def _create_adapter(self, job: LoRAJob, ref: RuntimeRef) -> None:
        name, client = job.metadata.name, self._client(ref.address)
        try:
            if job.spec.resume_from is not None:
                source = resume_source(self.store.url, job.spec.resume_from.path)
                await client.load_adapter(name, source, optimizer=job.spec.resume_from.optimizer, expect_seq=1)
            else:
                await client.create_adapter(name, job.spec.lora, expect_seq=1)
        except errors.UserError as exc:
            raise errors.InvalidInput(f"runtime {ref.pod} refused the adapter: {exc.message}", field=exc.field) from exc
