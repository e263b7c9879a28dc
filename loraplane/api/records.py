"""Tenant-checked access to the records the gateway keeps in the artifact store.

Callers: `gateway.Gateway`, `futures`, and the REST routes. Sessions, samplers, training runs and
checkpoints all live in the store (layout: `loraplane.core.artifacts`), so every gateway replica
sees the same ones and they survive restarts. Session and sampler records never change owner, so
they are cached in memory after the first read.

Every lookup takes the caller's tenant: a record of another tenant is reported exactly like a
missing one (404), so ids cannot be probed across tenants.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from loraplane.clients import artifact_store
from loraplane.clients.artifact_store import ArtifactStore
from loraplane.core import artifacts, errors
from loraplane.core.artifacts import TinkerPath

log = logging.getLogger(__name__)


class _Record(BaseModel):
    # Fields a newer release adds are kept when this one rewrites the record.
    model_config = ConfigDict(extra="allow")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SessionEnd(_Record):
    """How a session finished."""

    time: str
    #: "success" (the client finished it), "expired" (no heartbeat), or the client's own reason
    reason: str
    #: expired sessions: the seconds without a heartbeat, and the last state saved of each run
    after_s: int | None = None
    saved: dict[str, str] = Field(default_factory=dict)


class SessionRecord(_Record):
    """A Tinker session: whose it is, and whether it is still alive."""

    session_id: str
    tenant: str
    created: str
    tags: list[str] = Field(default_factory=list)
    user_metadata: dict[str, str] = Field(default_factory=dict)
    project_id: str | None = None
    display_name: str | None = None
    finished: SessionEnd | None = None
    #: the last heartbeat written (throttled; `sessions_expiry.needs_write`)
    last_heartbeat: str | None = None


class SamplerRecord(_Record):
    """A sampling client, and what it samples from (`kind`):

    - `base_model`: the base model itself, on any runtime of it (no adapter);
    - `checkpoint`: a saved sampler checkpoint (`model_path`), loaded from `source` under `adapter_id`
      on whichever runtime serves it;
    - `snapshot`: a live copy of a training run's weights, adapter `adapter_id` on the run's
      runtime `pod`, as long as its training run (`job`) lives there.
    """

    sampler_id: str
    tenant: str
    session_id: str
    base_model: str
    created: str
    kind: Literal["base_model", "checkpoint", "snapshot"]
    adapter_id: str | None = None
    #: checkpoint samplers: the tinker:// path, and the store URL it loads from
    model_path: str | None = None
    source: str | None = None
    #: snapshot samplers: the training run's job, and the pod holding the snapshot
    job: str | None = None
    pod: str | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _kind_of_older_records(cls, data: Any) -> Any:
        """Records written before `kind` existed say it by the keys they hold."""
        if isinstance(data, dict) and "kind" not in data:
            kind = "snapshot" if data.get("job") else "checkpoint" if data.get("source") else "base_model"
            data = {**data, "kind": kind}
        return data


def checkpoint_view(path: TinkerPath, record: dict[str, Any]) -> dict[str, Any]:
    """checkpoint.json -> Tinker's `Checkpoint`. Pure; called by the REST routes."""
    out: dict[str, Any] = {
        "checkpoint_id": path.checkpoint_id,
        "checkpoint_type": path.checkpoint_type,
        "time": record.get("time"),
        "tinker_path": str(path),
        "public": False,
    }
    for key in ("size_bytes", "user_metadata", "expires_at"):
        if record.get(key) is not None:
            out[key] = record[key]
    return out


def training_run_view(
    run: dict[str, Any], *, last_checkpoint: dict[str, Any] | None, last_sampler: dict[str, Any] | None
) -> dict[str, Any]:
    """run.json -> Tinker's `TrainingRun`. Pure; called by the REST routes."""
    out: dict[str, Any] = {
        "training_run_id": run["training_run_id"],
        "base_model": run["base_model"],
        "model_owner": run["tenant"],
        "is_lora": True,
        "corrupted": False,
        "lora_rank": (run.get("lora") or {}).get("rank"),
        "last_request_time": run.get("last_request_time") or run.get("created"),
        "user_metadata": {str(k): str(v) for k, v in (run.get("user_metadata") or {}).items()},
    }
    if last_checkpoint:
        out["last_checkpoint"] = last_checkpoint
    if last_sampler:
        out["last_sampler_checkpoint"] = last_sampler
    return out


R = TypeVar("R", bound=_Record)


def _parsed(model: type[R], raw: dict[str, Any] | None) -> R | None:
    """A stored record as `model`; one that does not parse (written by hand, truncated) is as
    missing as an absent one, and logged. No side effects but the log line."""
    if raw is None:
        return None
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        log.warning("ignoring a malformed %s: %s", model.__name__, exc.errors()[0])
        return None


class Records:
    """Sessions, samplers, runs and checkpoints of one store, seen by one tenant at a time."""

    def __init__(self, store: ArtifactStore, clock: Callable[[], str]) -> None:
        self.store = store
        #: ISO-8601 "now", for checkpoint expiry
        self.clock = clock
        #: session_id -> record (tenant never changes)
        self._sessions: dict[str, SessionRecord] = {}
        #: sampler_id -> record
        self._samplers: dict[str, SamplerRecord] = {}
        #: whether the store's indexes are known to be complete
        self._indexed = False

    # -- sessions -------------------------------------------------------------------------------
    def put_session(self, record: SessionRecord) -> None:
        raw = record.dump()
        self.store.write_json(artifacts.session_record_url(self.store.url, record.session_id), raw)
        self.store.touch(artifacts.join(artifacts.tenant_sessions_index_url(self.store.url, record.tenant),
                                        artifacts.session_marker(raw)))
        self._mark_open(raw)
        self._sessions[record.session_id] = record

    def _mark_open(self, record: dict[str, Any]) -> None:
        marker = artifacts.join(artifacts.open_sessions_index_url(self.store.url), record["session_id"])
        if record.get("finished"):
            self.store.delete(marker)
        else:
            self.store.touch(marker)

    def open_session_ids(self) -> list[str]:
        """Every tenant's sessions not yet finished (one folder listing)."""
        self._ensure_index()
        return self.store.children(artifacts.open_sessions_index_url(self.store.url))

    def session_record(self, session_id: str) -> SessionRecord | None:
        """A session's record as the store has it now (not the cache): another replica may have changed it."""
        return _parsed(SessionRecord, self.store.read_json(artifacts.session_record_url(self.store.url, session_id)))

    def session(self, tenant: str, session_id: str) -> SessionRecord:
        record = self._cached(SessionRecord, self._sessions, session_id, artifacts.session_record_url)
        if record is None or record.tenant != tenant:
            raise errors.NotFound(f"unknown session_id {session_id!r}", field="session_id")
        return record

    def _cached(self, model: type[R], cache: dict[str, R], key: str, url_of: Callable[[str, str], str]) -> R | None:
        """A record from this replica's cache, else from the store (records another replica wrote)."""
        record = cache.get(key)
        if record is None and "/" not in key:
            record = _parsed(model, self.store.read_json(url_of(self.store.url, key)))
            if record is not None:
                cache[key] = record
        return record

    def session_ids(self, tenant: str) -> list[str]:
        """The tenant's session ids, oldest first, from its index folder (no record is read)."""
        self._ensure_index()
        names = self.store.children(artifacts.tenant_sessions_index_url(self.store.url, tenant))
        return [name.rsplit("_", 1)[-1] for name in names]

    def _ensure_index(self) -> None:
        """Index the records of a store written before the indexes existed, once per store."""
        built = artifacts.index_built_url(self.store.url)
        if self._indexed or self.store.exists(built):
            self._indexed = True
            return
        for record in self.store.records("sessions"):
            if isinstance(record.get("tenant"), str) and isinstance(record.get("session_id"), str):
                self.store.touch(artifacts.join(artifacts.tenant_sessions_index_url(self.store.url, record["tenant"]),
                                                artifacts.session_marker(record)))
                self._mark_open(record)
        for record in self.store.records("samplers"):
            if isinstance(record.get("session_id"), str) and isinstance(record.get("sampler_id"), str):
                self.store.touch(artifacts.join(
                    artifacts.session_samplers_index_url(self.store.url, record["session_id"]), record["sampler_id"]))
        for run_id in self.store.run_ids():
            record = self.store.read_json(artifacts.run_record_url(self.store.url, run_id))
            if record is not None and isinstance(record.get("tenant"), str):
                self.store.touch(artifacts.join(artifacts.tenant_index_url(self.store.url, record["tenant"], "runs"),
                                                run_id))
        self.store.write_json(built, {"built": self.clock()})
        self._indexed = True

    # -- samplers -------------------------------------------------------------------------------
    def put_sampler(self, record: SamplerRecord) -> None:
        self.store.write_json(artifacts.sampler_record_url(self.store.url, record.sampler_id), record.dump())
        self.store.touch(artifacts.join(artifacts.session_samplers_index_url(self.store.url, record.session_id),
                                        record.sampler_id))
        self._samplers[record.sampler_id] = record

    def sampler(self, tenant: str, sampler_id: str) -> SamplerRecord:
        record = self._cached(SamplerRecord, self._samplers, sampler_id, artifacts.sampler_record_url)
        if record is None or record.tenant != tenant:
            raise errors.NotFound(f"unknown sampler {sampler_id!r}", field="sampling_session_id")
        return record

    def samplers_of_session(self, session_id: str) -> list[str]:
        self._ensure_index()
        return self.store.children(artifacts.session_samplers_index_url(self.store.url, session_id))

    # -- runs and checkpoints -------------------------------------------------------------------
    def put_run(self, record: dict[str, Any]) -> None:
        self.store.write_json(artifacts.run_record_url(self.store.url, record["training_run_id"]), record)
        self.store.touch(artifacts.join(artifacts.tenant_index_url(self.store.url, record["tenant"], "runs"),
                                        record["training_run_id"]))

    def storage_bytes(self, tenant: str) -> int:
        """Bytes the tenant's checkpoints take in the store (I/O: walks their folders)."""
        self._ensure_index()
        run_ids = self.store.children(artifacts.tenant_index_url(self.store.url, tenant, "runs"))
        return sum(self.store.size_bytes(artifacts.join(artifacts.run_url(self.store.url, run_id), segment))
                   for run_id in run_ids for segment in artifacts.SEGMENTS)

    # -- sampling clients counted for quotas ----------------------------------------------------
    def open_sampler(self, tenant: str, sampler_id: str) -> None:
        self.store.touch(artifacts.join(artifacts.tenant_index_url(self.store.url, tenant, "samplers"), sampler_id))

    def close_sampler(self, tenant: str, sampler_id: str) -> None:
        self.store.delete(artifacts.join(artifacts.tenant_index_url(self.store.url, tenant, "samplers"), sampler_id))

    def open_samplers(self, tenant: str) -> int:
        return len(self.store.children(artifacts.tenant_index_url(self.store.url, tenant, "samplers")))

    def run(self, tenant: str, run_id: str, *, field: str = "training_run_id") -> dict[str, Any]:
        record = None
        if artifacts.NAME_PATTERN.match(run_id or ""):
            record = self.store.read_json(artifacts.run_record_url(self.store.url, run_id))
        if record is None or record.get("tenant") != tenant:
            raise errors.NotFound(f"unknown training run {run_id!r}", field=field)
        return record

    def runs(self, tenant: str) -> list[dict[str, Any]]:
        out = []
        for run_id in self.store.run_ids():
            record = self.store.read_json(artifacts.run_record_url(self.store.url, run_id))
            if record is not None and record.get("tenant") == tenant:
                out.append(record)
        return sorted(out, key=lambda r: (r.get("created", ""), r["training_run_id"]), reverse=True)

    def checkpoint(self, tenant: str, path: TinkerPath, *, field: str = "path") -> dict[str, Any]:
        """The checkpoint's record, after checking that its run belongs to `tenant`."""
        self.run(tenant, path.run_id, field=field)
        record = self.store.read_json(artifacts.checkpoint_record_url(self.store.url, path))
        if record is not None and artifacts.is_expired(record, self.clock()):
            self.store.delete(artifacts.checkpoint_url(self.store.url, path))
            record = None
        if record is None:
            raise errors.NotFound(f"unknown checkpoint {str(path)!r}", field=field)
        return record

    def checkpoints(self, tenant: str, run_id: str) -> list[dict[str, Any]]:
        """Tinker `Checkpoint` views of the run's checkpoints, oldest first; expired ones are deleted."""
        self.run(tenant, run_id)
        views, now = [], self.clock()
        for path in self.store.checkpoints(run_id):
            record = self.store.read_json(artifacts.checkpoint_record_url(self.store.url, path))
            if record is not None and artifacts.is_expired(record, now):
                self.store.delete(artifacts.checkpoint_url(self.store.url, path))
            elif record is not None:
                views.append(checkpoint_view(path, record))
        return sorted(views, key=lambda v: (v.get("time") or "", v["checkpoint_id"]))

    def set_ttl(self, tenant: str, path: TinkerPath, ttl_seconds: int | None) -> None:
        """Give a checkpoint a new lifetime from now (None: keep it forever)."""
        record = dict(self.checkpoint(tenant, path))
        record["expires_at"] = artifacts.expiry_time(self.clock(), ttl_seconds)
        self.store.write_json(artifacts.checkpoint_record_url(self.store.url, path), record)

    def delete_checkpoint(self, tenant: str, path: TinkerPath) -> None:
        self.checkpoint(tenant, path)
        self.store.delete(artifacts.checkpoint_url(self.store.url, path))

    # -- saves in flight ------------------------------------------------------------------------
    def pending_url(self, path: TinkerPath) -> str:
        """Where a save's request metadata waits until the runtime has written its files."""
        return artifacts.save_pending_url(self.store.url, path)

    def finish_save(self, path: TinkerPath, *, now: str, step: int | None, size_bytes: int | None) -> None:
        """Write checkpoint.json once the runtime has saved the files (idempotent: the runtime has
        usually written it already, when the files were complete)."""
        artifact_store.record_saved_checkpoint(artifacts.checkpoint_url(self.store.url, path), now=now, step=step,
                                          size_bytes=size_bytes)
