"""Session expiry: a session whose client stopped heartbeating is wound down like a crashed notebook's.

Callers: `app.create_app` starts `run` in the gateway's lifespan; `routes.sessions` records each
heartbeat with `touch`; `futures.retrieve` answers the futures of an expired session with
`future_answer`.

Design notes
============
* The tinker SDK heartbeats every 10 s and warns after 120 s without success that the session
  "will be terminated". The default expiry is 180 s: 18 missed heartbeats, a minute after that
  warning, so a network blip of the SDK's own tolerance never costs a session.
* Heartbeats are written to the session record (at most every `ttl / 6`, so the store sees one
  write per half minute by default, not one per 10 s); every gateway replica sweeps all records
  in the store, so expiry works with one gateway (`loraplane serve`) or many (Kubernetes).
* Expiring a session: it is marked finished (reason `expired`) first, so its heartbeats get 410
  and its futures fail at once; then each training run's last state (weights and optimizer) is
  saved as `tinker://<model_id>/weights/session-expired`, and the session is finished as by the
  SDK's `close()`: its jobs are deleted (adapters unloaded) and its sampler snapshots dropped.
  Its checkpoints stay. A counter counts expiries.
* Pending futures of an expired session answer Tinker's failed-future shape (`RequestFailedError`
  in the SDK) naming the saved states to resume from.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from loraplane.api import codecs
from loraplane.api.records import SessionEnd, SessionRecord
from loraplane.core import artifacts, errors
from loraplane.core.runtime_ops import OpBody, OpKind

log = logging.getLogger(__name__)

#: Seconds without a heartbeat after which a session expires (see the module notes).
DEFAULT_EXPIRY_S = 180.0
#: Name of the checkpoint that keeps an expired training run's last state.
EXPIRED_CHECKPOINT = "session-expired"
#: Longest wait for one run's last state to be saved.
SAVE_TIMEOUT_S = 300.0


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def last_seen(record: SessionRecord) -> str:
    """When the session last showed it is alive: its last heartbeat, else its creation. Pure."""
    return record.last_heartbeat or record.created or ""


def is_expired(record: SessionRecord, now: str, ttl_s: float, watching_since: str | None = None) -> bool:
    """Whether an unfinished session has gone `ttl_s` seconds without a heartbeat. Pure.

    `watching_since` is when this gateway started sweeping: no session expires sooner than `ttl_s`
    after it, so a gateway restart (whose predecessor may have held heartbeats back) costs no
    session whose client is still beating.
    """
    if record.finished is not None or not last_seen(record):
        return False
    seen = parse_time(last_seen(record))
    if watching_since is not None:
        seen = max(seen, parse_time(watching_since))
    return (parse_time(now) - seen).total_seconds() >= ttl_s


def needs_write(record: SessionRecord, now: str, ttl_s: float) -> bool:
    """Whether a heartbeat at `now` must be written to the store (throttled to ttl / 6). Pure."""
    seen = record.last_heartbeat
    return not seen or (parse_time(now) - parse_time(seen)).total_seconds() >= ttl_s / 6


def touch(gw: Any, record: SessionRecord, ttl_s: float) -> SessionRecord:
    """Record a heartbeat; returns the session record as the store has it (maybe finished by another replica)."""
    now = gw.clock()
    if not needs_write(record, now, ttl_s):
        return record
    stored = gw.records.session_record(record.session_id) or record
    if stored.finished is not None:
        gw.records.put_session(stored)
        return stored
    updated = stored.model_copy(update={"last_heartbeat": now})
    gw.records.put_session(updated)
    return updated


def future_answer(record: SessionRecord) -> dict[str, Any] | None:
    """The failed-future answer for any future of an expired session; None for other sessions. Pure."""
    finished = record.finished
    if finished is None or finished.reason != "expired":
        return None
    resume = f"; resume from {', '.join(sorted(finished.saved.values()))}" if finished.saved else ""
    after = "?" if finished.after_s is None else finished.after_s
    return codecs.failed(
        f"session {record.session_id!r} expired after {after} s without a heartbeat "
        f"and its work was stopped{resume}", "user",
    )


class SessionExpiry:
    """Sweeps the store's sessions and expires those without a heartbeat for `ttl_s` seconds."""

    def __init__(self, gw: Any, ttl_s: float, registry: CollectorRegistry | None = None) -> None:
        self.gw = gw
        self.ttl_s = ttl_s
        #: when this gateway began to sweep (see `is_expired`); set by `run`
        self.watching_since: str | None = None
        self.expired = Counter("loraplane_gateway_sessions_expired", "Sessions expired for lack of a heartbeat",
                               registry=registry)

    @property
    def interval_s(self) -> float:
        return max(0.2, min(30.0, self.ttl_s / 6))

    async def run(self) -> None:
        self.watching_since = self.gw.clock()
        while True:
            try:
                await self.sweep()
            except Exception:  # one bad sweep must not stop expiry for good
                log.exception("session expiry sweep failed")
            await asyncio.sleep(self.interval_s)

    async def sweep(self) -> list[str]:
        """Expire every overdue session; returns their ids."""
        now = self.gw.clock()
        done = []
        # Only open sessions are read (an index folder), never every session the store has seen:
        # a sweep's cost follows the live sessions, and it reads off the event loop.
        ids = await asyncio.to_thread(self.gw.records.open_session_ids)
        records = await asyncio.to_thread(lambda: [r for r in map(self.gw.records.session_record, ids) if r])
        for record in records:
            if is_expired(record, now, self.ttl_s, self.watching_since):
                await self.expire(record)
                done.append(record.session_id)
        return done

    async def expire(self, record: SessionRecord) -> None:
        gw, session_id, tenant = self.gw, record.session_id, record.tenant
        latest = gw.records.session_record(session_id) or record
        if not is_expired(latest, gw.clock(), self.ttl_s, self.watching_since):
            return  # a heartbeat arrived meanwhile, or another gateway replica expired it first
        log.info("session %s (tenant %s) expired: no heartbeat since %s", session_id, tenant, last_seen(record))
        finished = SessionEnd(time=gw.clock(), reason="expired", after_s=int(self.ttl_s))
        gw.records.put_session(record.model_copy(update={"finished": finished}))
        for job in await gw.cp.list_jobs(tenant=tenant):
            ref = job.spec.session
            if ref is None or ref.session_id != session_id:
                continue
            try:
                finished.saved[ref.model_id] = await self._save_last_state(tenant, ref.model_id, job.metadata.name)
            except (errors.LoraplaneError, TimeoutError) as exc:
                log.warning("session %s: last state of %s not saved: %s", session_id, ref.model_id, exc)
        await gw.finish_session(tenant, session_id, {"type": "expired"})
        final = gw.records.session_record(session_id) or record
        gw.records.put_session(final.model_copy(update={"finished": finished.model_copy(update={"time": gw.clock()})}))
        self.expired.inc()

    async def _save_last_state(self, tenant: str, model_id: str, job_name: str) -> str:
        gw = self.gw
        runtime = gw.cp.runtime_for(job_name)
        if runtime is None:
            raise errors.NotFound(f"training run {model_id!r} has no runtime")
        path = artifacts.TinkerPath(model_id, "weights", EXPIRED_CHECKPOINT)
        dest = await gw.reserve_save(tenant, path, overwrite=True, ttl_seconds=None, user_metadata={"reason": "session expired"})
        rid = await gw.runtimes.submit_op(runtime.address, gw.adapter(model_id),
                                          OpBody(seq_id=None, op=OpKind.SAVE_STATE, dest=dest, optimizer=True))
        async with asyncio.timeout(SAVE_TIMEOUT_S):
            while True:
                result = await gw.runtimes.result(runtime.address, rid, wait_s=min(10.0, gw.long_poll_s),
                                                  owner=gw.adapter(model_id))
                if result.state == "failed":
                    raise errors.ServerError(result.error)
                if result.state == "done":
                    body = result.result or {}
                    size = body.get("size_bytes")
                    gw.records.finish_save(path, now=gw.clock(), step=body.get("step"),
                                           size_bytes=int(size) if isinstance(size, int) else None)
                    return str(path)
