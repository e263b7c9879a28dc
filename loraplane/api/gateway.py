"""The gateway's operations: Tinker calls turned into control-plane and runtime calls.

Callers: the route modules (one method per Tinker call; routes only parse and return).

Design notes
============
* Session-level calls (create_model, create-from-state, unload) become LoRAJob operations through
  `ControlPlane`; the submit creates the job and returns at once, and `retrieve_future` waits for
  it to run, so a slow start (a pod being scheduled) never holds a submit past the SDK's timeout.
* Per-step calls go to `control_plane.runtime_for(job)` (a local cache) and on to the runtime; the
  runtime's executor orders and deduplicates them per adapter by `seq_id`, which the gateway
  forwards unchanged. The runtime adapter id of a training run is the control plane's to say
  (`ControlPlane.adapter_id`); the other ids and the ops' names are `loraplane.core.runtime_ops`'.
* Futures are named `ids.FutureRef`: any replica can answer `retrieve_future` (see `futures`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic

from loraplane.api import codecs, ids, jobs, limits, protocol
from loraplane.api.dataplane import Runtimes
from loraplane.api.records import Records, SamplerRecord, SessionEnd, SessionRecord
from loraplane.clients import artifact_store
from loraplane.core import artifacts, errors
from loraplane.core import quotas as quotas_mod
from loraplane.core.controlplane import ControlPlane
from loraplane.core.models.v1alpha1 import LoRAJob, ResumeFrom, RuntimeRef
from loraplane.core.models.v1alpha1.lorajob import TERMINAL_PHASES
from loraplane.core.params import AdamParams
from loraplane.core.runtime_ops import OpBody, OpKind, checkpoint_adapter_id, snapshot_adapter_id

log = logging.getLogger(__name__)
M = TypeVar("M", bound=pydantic.BaseModel)

#: pod field of futures that the control plane answers (no runtime involved)
CONTROL_PLANE_POD = "cp"


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


class Gateway:
    """Everything a route needs: control plane, runtimes, records, settings."""

    def __init__(
        self,
        *,
        control_plane: ControlPlane,
        runtimes: Runtimes,
        store: artifact_store.ArtifactStore,
        models: list[str] | None = None,
        long_poll_s: float = 30.0,
        job_start_timeout_s: float = 300.0,
        max_request_bytes: int = 64 * 1024 * 1024,
        sample_caps: limits.SampleCaps | None = None,
        quotas: quotas_mod.QuotaTable | None = None,
        clock: Callable[[], str] = utcnow,
    ) -> None:
        self.cp = control_plane
        self.runtimes = runtimes
        self.store = store
        self.records = Records(store, clock)
        #: base models clients may ask for (None/empty = whatever the control plane places)
        self.models = list(models or [])
        self.long_poll_s = long_poll_s
        #: seconds a new run's job may take to start before create_model fails (`futures.start_overdue`)
        self.job_start_timeout_s = job_start_timeout_s
        self.max_request_bytes = max_request_bytes
        self.sample_caps = sample_caps or limits.SampleCaps()
        self.quotas = quotas or quotas_mod.QuotaTable()
        self.clock = clock
        #: (runtime address, adapter id) of snapshots this replica has loaded as samplers
        self._loaded: set[tuple[str, str]] = set()

    # -- sessions -------------------------------------------------------------------------------
    def create_session(self, tenant: str, body: protocol.CreateSession) -> dict[str, Any]:
        session_id = ids.new_session_id()
        self.records.put_session(SessionRecord(
            session_id=session_id, tenant=tenant, created=self.clock(), tags=body.tags,
            user_metadata={str(k): str(v) for k, v in body.user_metadata.items()},
            project_id=body.project_id, display_name=body.display_name,
        ))
        return {"session_id": session_id}

    async def finish_session(self, tenant: str, session_id: str, reason: dict[str, Any] | None) -> dict[str, Any]:
        """Mark the session finished and delete its jobs (their adapters are unloaded)."""
        record = self.records.session(tenant, ids.check_session_id(session_id))
        end = SessionEnd(time=self.clock(), reason=str((reason or {}).get("type", "success")))
        self.records.put_session(record.model_copy(update={"finished": end}))
        # Live snapshots (save_weights_and_get_sampling_client) are adapters of their own on the
        # training run's runtime: unload them while that runtime is still known.
        for sampler in self.records.samplers_of_session(session_id):
            self.records.close_sampler(tenant, sampler)
            held = self.records.sampler(tenant, sampler)
            ref = self.cp.runtime_for(held.job) if held.kind == "snapshot" and held.job else None
            if ref is not None and ref.pod == held.pod and held.adapter_id:
                try:
                    await self.runtimes.client(ref.address).delete_adapter(held.adapter_id)
                except errors.LoraplaneError as exc:
                    log.info("sampler %s already gone: %s", sampler, exc.message)
        for job in await self.cp.list_jobs(tenant=tenant):
            if job.spec.session and job.spec.session.session_id == session_id:
                await self.cp.delete_job(job.metadata.name)
        self.store.delete(artifacts.sequences_url(self.store.url, session_id))  # no one can train on them now
        return {"status": "finished"}

    # -- training runs as jobs ------------------------------------------------------------------
    def _check_model(self, base_model: str, field: str = "base_model") -> None:
        if self.models and base_model not in self.models:
            raise errors.InvalidInput(f"unknown {field} {base_model!r}; served: {self.models}", field=field)

    async def create_model(self, tenant: str, body: protocol.CreateModel) -> dict[str, Any]:
        self.records.session(tenant, ids.check_session_id(body.session_id))
        self._check_model(body.base_model)
        if body.optimizer_config.type not in jobs.OPTIMIZERS:
            raise errors.InvalidInput(
                f"optimizer_config.type {body.optimizer_config.type!r} is not supported; accepted: {list(jobs.OPTIMIZERS)}",
                field="optimizer_config.type",
            )
        job = jobs.build_job(tenant=tenant, session_id=body.session_id, model_seq_id=body.model_seq_id,
                             base_model=body.base_model, lora=jobs.lora_of(body.lora_config))
        return await self._start_run(tenant, job, body.user_metadata, op=OpKind.CREATE_MODEL)

    async def create_from_state(self, tenant: str, body: protocol.LoadWeights) -> dict[str, Any]:
        """load_weights with session_id + model_seq_id: a new run that starts from a saved state."""
        if body.session_id is None or body.model_seq_id is None:
            raise errors.InvalidInput("load_weights needs model_id, or session_id and model_seq_id", field="model_id")
        self.records.session(tenant, ids.check_session_id(body.session_id))
        path = artifacts.parse_tinker_path(body.path)
        if body.optimizer and path.segment != "weights":
            raise errors.InvalidInput("restoring the optimizer needs a weights/ (save_state) path", field="path")
        self.records.checkpoint(tenant, path)
        source = self.records.run(tenant, path.run_id, field="path")
        if body.base_model and body.base_model != source["base_model"]:
            raise errors.InvalidInput(
                f"base_model {body.base_model!r} differs from the checkpoint's {source['base_model']!r}", field="base_model"
            )
        job = jobs.build_job(
            tenant=tenant, session_id=body.session_id, model_seq_id=body.model_seq_id,
            base_model=source["base_model"], lora=jobs.lora_of(source.get("lora")),
            resume_from=ResumeFrom(path=str(path), optimizer=body.optimizer),
        )
        return await self._start_run(tenant, job, body.user_metadata, op=OpKind.CREATE_FROM_STATE)

    async def _start_run(self, tenant: str, job: LoRAJob, metadata: dict[str, Any] | None, *,
                         op: OpKind) -> dict[str, Any]:
        session = job.spec.session
        assert session is not None
        quota = self.quotas.for_tenant(tenant)
        quotas_mod.check_rank(tenant, job.spec.lora.rank, quota)
        if quota.max_training_clients is not None:
            live = [j for j in await self.cp.list_jobs(tenant=tenant)
                    if j.status.phase not in TERMINAL_PHASES and j.metadata.name != job.metadata.name]
            quotas_mod.check_count(tenant, "training clients", "max_training_clients", len(live),
                                   quota.max_training_clients)
        existing = self.store.read_json(artifacts.run_record_url(self.store.url, session.model_id))
        if existing is None:
            self.records.put_run(artifacts.build_run_record(
                run_id=session.model_id, tenant=tenant, base_model=job.spec.base_model,
                lora=job.spec.lora.model_dump(exclude_none=True), now=self.clock(),
                user_metadata={str(k): str(v) for k, v in (metadata or {}).items()},
            ))
        await self.cp.create_job(job)
        ref = ids.FutureRef(ids.owner_key(session.model_id), CONTROL_PLANE_POD, op, "0")
        return {"request_id": ref.encode(), "model_id": session.model_id}

    async def job(self, tenant: str, model_id: str) -> LoRAJob:
        """The job of a training run owned by `tenant` (404 otherwise)."""
        session_id, _ = ids.parse_model_id(model_id)
        self.records.session(tenant, session_id)
        job = await self.cp.get_job(ids.job_name(model_id))
        if job is None or job.spec.tenant != tenant:
            raise errors.NotFound(f"unknown model_id {model_id!r}", field="model_id")
        return job

    def runtime(self, model_id: str) -> RuntimeRef:
        ref = self.cp.runtime_for(ids.job_name(model_id))
        if ref is None:
            raise errors.CapacityError(f"model {model_id!r} is not placed on a runtime yet; retry shortly")
        return ref

    def adapter(self, model_id: str) -> str:
        """The runtime adapter id of a training run, as its control plane created it."""
        return self.cp.adapter_id(ids.job_name(model_id))

    def owned_runtime(self, tenant: str, model_id: str) -> RuntimeRef:
        """Ownership from the session record (cached), runtime from the control plane's cache: no remote read."""
        session_id, _ = ids.parse_model_id(model_id)
        self.records.session(tenant, session_id)
        ref = self.cp.runtime_for(ids.job_name(model_id))
        if ref is None:
            raise errors.NotFound(f"unknown model_id {model_id!r} (or not running)", field="model_id")
        return ref

    async def get_info(self, tenant: str, model_id: str) -> dict[str, Any]:
        job = await self.job(tenant, model_id)
        ref = self.cp.runtime_for(job.metadata.name)
        health = await self.runtimes.health(ref.address) if ref else {}
        return jobs.info_for(job, tokenizer_id=health.get("model_path"), arch=health.get("arch"))

    async def unload(self, tenant: str, model_id: str) -> dict[str, Any]:
        job = await self.job(tenant, model_id)
        await self.cp.delete_job(job.metadata.name)
        ref = ids.FutureRef(ids.owner_key(model_id), CONTROL_PLANE_POD, OpKind.UNLOAD_MODEL, "0")
        return {"request_id": ref.encode(), "model_id": model_id}

    # -- per-step training ops ------------------------------------------------------------------
    def _future(self, model_id: str, ref: RuntimeRef, op: OpKind, rid: str) -> dict[str, Any]:
        return {"request_id": ids.FutureRef(ids.owner_key(model_id), ref.pod, op, rid).encode(), "model_id": model_id}

    async def forward_backward(self, tenant: str, body: bytes, content_encoding: str | None) -> dict[str, Any]:
        if codecs.is_identity(content_encoding):
            raw = codecs.decode_body(body, content_encoding, max_bytes=self.max_request_bytes)
        else:  # decompressing costs up to max_request_bytes of work: not on the event loop
            raw = await asyncio.to_thread(codecs.decode_body, body, content_encoding, max_bytes=self.max_request_bytes)
        model_id, _seq = codecs.routing_fields(raw)
        ref = self.owned_runtime(tenant, model_id)
        rid = await self.runtimes.submit_forward_backward(
            ref.address, self.adapter(model_id), raw,
            sequences_url=artifacts.sequences_url(self.store.url, ids.parse_model_id(model_id)[0]), tenant=tenant)
        return self._future(model_id, ref, OpKind.FORWARD_BACKWARD, rid)

    async def optim_step(self, tenant: str, body: protocol.OptimStep) -> dict[str, Any]:
        if body.optimizer_params is not None and body.adam_params is None:
            raise errors.InvalidInput(
                f"optimizer_params of type {body.optimizer_params.get('type')!r} are not supported; send adam_params",
                field="optimizer_params",
            )
        ref = self.owned_runtime(tenant, body.model_id)
        params = AdamParams.model_validate((body.adam_params or AdamParams()).model_dump())
        rid = await self.runtimes.submit_op(
            ref.address, self.adapter(body.model_id), OpBody(seq_id=body.seq_id, op=OpKind.OPTIM_STEP, adam_params=params)
        )
        return self._future(body.model_id, ref, OpKind.OPTIM_STEP, rid)

    async def reserve_save(self, tenant: str, path: artifacts.TinkerPath, *, overwrite: bool,
                            ttl_seconds: int | None, user_metadata: dict[str, str] | None) -> str:
        quota = self.quotas.for_tenant(tenant)
        if quota.max_storage_bytes is not None:
            used = await asyncio.to_thread(self.records.storage_bytes, tenant)
            quotas_mod.check_storage(tenant, used, quota)
        record_url = artifacts.checkpoint_record_url(self.store.url, path)
        if not overwrite and self.store.exists(record_url):
            raise errors.InvalidInput(f"checkpoint {str(path)!r} exists; pass overwrite=True to replace it", field="path")
        self.store.write_json(self.records.pending_url(path), {
            "user_metadata": user_metadata or {}, "ttl_seconds": ttl_seconds,
        })
        return artifacts.checkpoint_url(self.store.url, path)

    async def save_weights(self, tenant: str, body: protocol.SaveWeights) -> dict[str, Any]:
        ref = self.owned_runtime(tenant, body.model_id)
        name = artifacts.check_name(body.path or f"ckpt-{body.seq_id or 0}", field="path")
        path = artifacts.TinkerPath(body.model_id, "weights", name)
        dest = await self.reserve_save(tenant, path, overwrite=body.overwrite, ttl_seconds=body.ttl_seconds,
                                  user_metadata=body.user_metadata)
        rid = await self.runtimes.submit_op(
            ref.address, self.adapter(body.model_id),
            OpBody(seq_id=body.seq_id, op=OpKind.SAVE_STATE, dest=dest, optimizer=True),
        )
        return self._future(body.model_id, ref, OpKind.SAVE_STATE, rid)

    async def save_for_sampler(self, tenant: str, body: protocol.SaveWeightsForSampler) -> dict[str, Any]:
        ref = self.owned_runtime(tenant, body.model_id)
        session_id, _ = ids.parse_model_id(body.model_id)
        adapter = ids.job_name(body.model_id)
        if body.path:
            path = artifacts.TinkerPath(body.model_id, "sampler_weights", artifacts.check_name(body.path, field="path"))
            dest = await self.reserve_save(tenant, path, overwrite=True, ttl_seconds=body.ttl_seconds,
                                      user_metadata=body.user_metadata)
            rid = await self.runtimes.submit_op(
                ref.address, self.adapter(body.model_id), OpBody(seq_id=body.seq_id, op=OpKind.SAVE_SAMPLER, dest=dest)
            )
            return self._future(body.model_id, ref, OpKind.SAVE_SAMPLER, rid)
        if body.sampling_session_seq_id is None:
            raise errors.InvalidInput("save_weights_for_sampler needs path or sampling_session_seq_id", field="path")
        job = await self.job(tenant, body.model_id)
        sampler = ids.sampler_id(session_id, body.sampling_session_seq_id)
        self.records.put_sampler(SamplerRecord(
            sampler_id=sampler, tenant=tenant, session_id=session_id, base_model=job.spec.base_model,
            created=self.clock(), kind="snapshot", adapter_id=snapshot_adapter_id(sampler), job=adapter, pod=ref.pod,
        ))
        rid = await self.runtimes.submit_op(
            ref.address, self.adapter(body.model_id),
            OpBody(seq_id=body.seq_id, op=OpKind.SNAPSHOT, sampler_id=snapshot_adapter_id(sampler)),
        )
        return self._future(body.model_id, ref, OpKind.SNAPSHOT, rid)

    async def load_weights(self, tenant: str, body: protocol.LoadWeights) -> dict[str, Any]:
        if body.model_id is None:
            return await self.create_from_state(tenant, body)
        ref = self.owned_runtime(tenant, body.model_id)
        path = artifacts.parse_tinker_path(body.path)
        self.records.checkpoint(tenant, path)
        rid = await self.runtimes.submit_op(ref.address, self.adapter(body.model_id), OpBody(
            seq_id=body.seq_id, op=OpKind.LOAD_STATE, source=artifacts.checkpoint_url(self.store.url, path),
            optimizer=body.optimizer,
        ))
        return self._future(body.model_id, ref, OpKind.LOAD_STATE, rid)

    # -- sampling -------------------------------------------------------------------------------
    async def create_sampling_session(self, tenant: str, body: protocol.CreateSamplingSession) -> dict[str, Any]:
        self.records.session(tenant, ids.check_session_id(body.session_id))
        if (body.base_model is None) == (body.model_path is None):
            raise errors.InvalidInput("give exactly one of base_model and model_path", field="model_path")
        sampler = ids.sampler_id(body.session_id, body.sampling_session_seq_id)
        if body.model_path is not None:
            path = artifacts.parse_tinker_path(body.model_path, field="model_path")
            self.records.checkpoint(tenant, path, field="model_path")
            run = self.records.run(tenant, path.run_id, field="model_path")
            record = SamplerRecord(
                sampler_id=sampler, tenant=tenant, session_id=body.session_id, base_model=run["base_model"],
                created=self.clock(), kind="checkpoint", model_path=str(path),
                adapter_id=checkpoint_adapter_id(str(path)), source=artifacts.checkpoint_url(self.store.url, path))
        else:
            self._check_model(str(body.base_model))
            record = SamplerRecord(sampler_id=sampler, tenant=tenant, session_id=body.session_id,
                                   base_model=str(body.base_model), created=self.clock(), kind="base_model")
        quota = self.quotas.for_tenant(tenant)
        if quota.max_sampling_clients is not None:
            quotas_mod.check_count(tenant, "sampling clients", "max_sampling_clients",
                                   self.records.open_samplers(tenant), quota.max_sampling_clients)
        self.records.put_sampler(record)
        self.records.open_sampler(tenant, sampler)
        return {"sampling_session_id": sampler}

    def sampler_view(self, tenant: str, sampler_id: str) -> dict[str, Any]:
        record = self.records.sampler(tenant, sampler_id)
        out = {"sampler_id": sampler_id, "base_model": record.base_model}
        if record.model_path:
            out["model_path"] = record.model_path
        return out

    async def sampler_runtime(self, record: SamplerRecord) -> RuntimeRef:
        """Where a sampler samples: its training job's runtime for a live snapshot, else any runtime of its model."""
        if record.kind == "snapshot":
            ref = self.cp.runtime_for(record.job or "")
            if ref is None or ref.pod != record.pod:
                raise errors.NotFound(
                    f"sampler {record.sampler_id!r} lived on a training run that is gone", field="sampling_session_id"
                )
            return ref
        refs = await self.cp.runtimes_for_model(record.base_model)
        if not refs:
            raise errors.CapacityError(f"no runtime serves {record.base_model!r} right now")
        # Sticky: the same sampler lands on the same runtime while the set of runtimes is stable.
        digest = int(hashlib.sha256(record.sampler_id.encode()).hexdigest(), 16)
        return sorted(refs, key=lambda r: r.pod)[digest % len(refs)]

    async def asample(self, tenant: str, body: protocol.Sample) -> dict[str, Any]:
        record = self.records.sampler(tenant, body.sampling_session_id)
        tokens = codecs.prompt_tokens(body.prompt)
        limits.check_sample_size(self.sample_caps, prompt_tokens=len(tokens), num_samples=body.num_samples,
                                 max_tokens=body.sampling_params.new_tokens)
        ref = await self.sampler_runtime(record)
        seq = body.seq_id if body.seq_id is not None else 0
        sequence_ids = codecs.sequence_ids(record.sampler_id, seq, body.num_samples)
        request = codecs.sample_request(tenant, record, body, tokens, sequence_ids, store_url=self.store.url)
        if record.kind == "checkpoint":
            await self._ensure_loaded(ref, record)
        try:
            rid = await self.runtimes.submit_sample(ref.address, request)
        except errors.NotFound:
            if record.kind == "snapshot":
                raise errors.NotFound(
                    f"sampler {record.sampler_id!r} was a snapshot of its training client that has been "
                    "dropped: a training client keeps only its newest snapshots. Take a new one, or "
                    "save_weights_for_sampler with a path to keep it", field="sampling_session_id") from None
            if record.kind != "checkpoint":
                raise
            self._loaded.discard((ref.address, record.adapter_id or ""))  # the runtime restarted: load it again
            await self._ensure_loaded(ref, record)
            rid = await self.runtimes.submit_sample(ref.address, request)
        owner = ids.owner_key(record.sampler_id)
        return {
            "request_id": ids.FutureRef(owner, ref.pod, OpKind.SAMPLE, rid).encode(),
            "sample_sequence_ids": sequence_ids,
        }

    async def _ensure_loaded(self, ref: RuntimeRef, record: SamplerRecord) -> None:
        assert record.adapter_id and record.source, "a checkpoint sampler names its adapter and source"
        key = (ref.address, record.adapter_id)
        if key not in self._loaded:
            await self.runtimes.load_adapter(ref.address, record.adapter_id, record.source)
            self._loaded.add(key)
