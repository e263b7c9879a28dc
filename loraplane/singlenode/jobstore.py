"""LoRAJobs of `loraplane serve` in an SQLite file: the objects, their status and their Events.

Callers: `singlenode.controlplane.EmbeddedControlPlane` (the gateway's control plane in
single-node mode) creates, applies, lists and deletes jobs; the shared reconcile loop
(`loraplane.control.loop`) writes status, deletes expired jobs and posts Events through the
`JobStore` interface, as it does against the Kubernetes API.

Design notes
============
* The stored object is what the API server would return for the same manifest: apiVersion, kind,
  metadata (namespace, uid, generation, resourceVersion, creationTimestamp), spec with defaults
  filled in, status. Specs are validated by the pydantic model the CRD is generated from, and the
  CRD's immutability rules (`self == oldSelf`) are read from that model's schema, so a manifest
  that `kubectl apply` refuses is refused here for the same reason.
* resourceVersion is one increasing counter over the whole file, like etcd's revision: the loop's
  freshness check compares them as integers.
* The file is the durable copy; every write is a transaction (WAL journal). After a restart the
  control plane reads every job back and resumes its loop where the job stood.
* Calls are synchronous and short (one row), made on the event loop: a local SQLite write costs
  well under a millisecond, less than handing it to a thread.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from loraplane.control.store import JobGone
from loraplane.core import errors
from loraplane.core.manifests import immutable_spec_fields
from loraplane.core.models.v1alpha1.lorajob import TENANT_LABEL, LoRAJob, LoRAJobStatus

#: Listener of changes: (namespace, name, stored object or None when deleted).
Listener = Callable[[str, str, dict[str, Any] | None], None]

#: Events kept per job; older ones are dropped (the API server expires them after an hour).
MAX_EVENTS_PER_JOB = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT,
    time TEXT NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_job ON events (namespace, name, id);
CREATE TABLE IF NOT EXISTS revision (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);
INSERT OR IGNORE INTO revision (id, value) VALUES (0, 0);
"""


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces. Pure."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class SqliteJobStore:
    """`JobStore` over an SQLite file, plus what the embedded control plane needs to create jobs."""

    def __init__(self, path: Path, *, clock: Callable[[], str] = utcnow) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.clock = clock
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._listeners: list[Listener] = []

    def close(self) -> None:
        self._db.close()

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, namespace: str, name: str, body: dict[str, Any] | None) -> None:
        for listener in self._listeners:
            listener(namespace, name, body)

    # -- reads ----------------------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT body FROM jobs WHERE namespace = ? AND name = ?", (namespace, name)).fetchone()
        return json.loads(row[0]) if row else None

    async def list(self, namespace: str | None) -> list[dict[str, Any]]:
        return self.bodies(namespace)

    def bodies(self, namespace: str | None = None, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """The stored jobs, of one namespace and one tenant when given."""
        rows = self._db.execute("SELECT body FROM jobs WHERE ? IS NULL OR namespace = ? ORDER BY namespace, name",
                                (namespace, namespace)).fetchall()
        bodies = [json.loads(r[0]) for r in rows]
        return [b for b in bodies if tenant is None or b.get("spec", {}).get("tenant") == tenant]

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT time, type, reason, message FROM events WHERE namespace = ? AND name = ? ORDER BY id",
            (namespace, name)).fetchall()
        return [{"lastTimestamp": t, "type": ty, "reason": r, "message": m} for t, ty, r, m in rows]

    # -- writes ---------------------------------------------------------------------------------
    def _next_revision(self) -> str:
        self._db.execute("UPDATE revision SET value = value + 1 WHERE id = 0")
        return str(self._db.execute("SELECT value FROM revision WHERE id = 0").fetchone()[0])

    def _put(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            meta["resourceVersion"] = self._next_revision()
            self._db.execute("INSERT OR REPLACE INTO jobs (namespace, name, body) VALUES (?, ?, ?)",
                             (meta["namespace"], meta["name"], json.dumps(body)))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._notify(meta["namespace"], meta["name"], body)
        return body

    def create(self, job: LoRAJob) -> dict[str, Any]:
        """Store a new job; `Conflict` when one of that name exists."""
        meta = job.metadata
        if self.get(meta.namespace or "", meta.name) is not None:
            raise errors.Conflict(f"job {meta.name!r} already exists", field="metadata.name")
        body = job.model_copy(update={"status": type(job.status)()}).to_body()
        body["metadata"].update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=self.clock())
        body["metadata"]["labels"].setdefault(TENANT_LABEL, job.spec.tenant)
        body.pop("status", None)
        return self._put(body)

    def update(self, job: LoRAJob) -> dict[str, Any]:
        """Replace an existing job's spec, labels and annotations, as `kubectl apply` does.

        Immutable fields must keep their value (`InvalidInput` naming the field); generation
        grows when the spec changed, and status is kept.
        """
        meta = job.metadata
        current = self.get(meta.namespace or "", meta.name)
        if current is None:
            raise errors.NotFound(f"job {meta.name!r} does not exist", field="metadata.name")
        new_spec = job.spec.dump()
        for key in immutable_spec_fields():
            if current["spec"].get(key) != new_spec.get(key):
                raise errors.InvalidInput(f"spec.{key} is immutable", field=f"spec.{key}")
        body = dict(current)
        body["metadata"] = {**current["metadata"], "labels": {**meta.labels, TENANT_LABEL: job.spec.tenant},
                            "annotations": dict(meta.annotations)}
        if new_spec != current["spec"]:
            body["spec"] = new_spec
            body["metadata"]["generation"] = int(current["metadata"].get("generation") or 1) + 1
        return self._put(body)

    async def patch_status(self, namespace: str, name: str, status_patch: dict[str, Any]) -> dict[str, Any]:
        current = self.get(namespace, name)
        if current is None:
            raise JobGone(f"{namespace}/{name}")
        merged = merge_patch(current.get("status") or {}, status_patch)
        # The API server fills the schema's defaults into a written status; so does this store.
        current["status"] = {**merged, **LoRAJobStatus.model_validate(merged).dump()}
        return self._put(current)

    async def delete(self, namespace: str, name: str) -> None:
        self.remove(namespace, name)

    def remove(self, namespace: str, name: str) -> bool:
        """Delete the job and its Events; False when there was none."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            gone = self._db.execute("DELETE FROM jobs WHERE namespace = ? AND name = ?", (namespace, name)).rowcount
            self._db.execute("DELETE FROM events WHERE namespace = ? AND name = ?", (namespace, name))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if gone:
            self._notify(namespace, name, None)
        return bool(gone)

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body.get("metadata", {})
        namespace, name = meta.get("namespace") or "", meta.get("name") or ""
        try:
            self._db.execute(
                "INSERT INTO events (namespace, name, uid, time, type, reason, message) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (namespace, name, meta.get("uid"), self.clock(), type_, reason, message[:1000]))
            self._db.execute(
                "DELETE FROM events WHERE namespace = ? AND name = ? AND id NOT IN "
                "(SELECT id FROM events WHERE namespace = ? AND name = ? ORDER BY id DESC LIMIT ?)",
                (namespace, name, namespace, name, MAX_EVENTS_PER_JOB))
        except sqlite3.Error:  # an Event is a courtesy; the status says the same
            pass
