"""The artifact-store layout, and the mapping between `tinker://` paths and store URLs.

Callers: the gateway (checkpoints, run and sampler records), the control plane (declarative runs
and restores), the runtime (checkpoints), `loraplane.clients.artifact_store`. The layout under
the store URL:

    <store>/runs/<run_id>/run.json                          the training run's record
    <store>/runs/<run_id>/weights/<name>/                   a training state (docs/runtime-api.md)
    <store>/runs/<run_id>/sampler_weights/<name>/           a sampler snapshot
    <store>/runs/<run_id>/<segment>/<name>/checkpoint.json  the checkpoint's record
    <store>/samplers/<sampler_id>.json                      sampler records, shared by gateway replicas
    <store>/sessions/<session_id>.json                      Tinker session records
    <store>/index/tenants/<tenant>/sessions/<created>_<id>  a tenant's sessions (empty markers), oldest first
    <store>/index/sessions/<session_id>/<sampler_id>        a session's samplers (empty markers)
    <store>/index/open-sessions/<session_id>                sessions not yet finished
    <store>/index/tenants/<tenant>/runs/<run_id>            a tenant's training runs
    <store>/index/tenants/<tenant>/samplers/<sampler_id>    a tenant's sampling clients of open sessions

Design notes
============
The path and record functions are pure (no I/O, time passed in) so that every component computes
the same URL for the same checkpoint. The I/O is `loraplane.clients.artifact_store.ArtifactStore`,
the one thin adapter over fsspec; it knows nothing of tenants, which the gateway checks on the
records it reads.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplane.core import errors

TINKER_SCHEME = "tinker://"
#: path segment -> Tinker checkpoint_type
SEGMENTS: dict[str, str] = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}
#: Checkpoint and run names: no '/', since a tinker:// path has exactly three parts.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


@dataclass(frozen=True)
class TinkerPath:
    """`tinker://<run_id>/<segment>/<name>`."""

    run_id: str
    segment: str
    name: str

    @property
    def checkpoint_id(self) -> str:
        return f"{self.segment}/{self.name}"

    @property
    def checkpoint_type(self) -> str:
        return SEGMENTS[self.segment]

    def __str__(self) -> str:
        return f"{TINKER_SCHEME}{self.run_id}/{self.segment}/{self.name}"


def parse_tinker_path(path: str, *, field: str = "path") -> TinkerPath:
    """Parse and validate a checkpoint path; raises InvalidInput naming `field`. Pure."""
    if not isinstance(path, str) or not path.startswith(TINKER_SCHEME):
        raise errors.InvalidInput(f"{field} must start with {TINKER_SCHEME!r}, got {path!r}", field=field)
    parts = path[len(TINKER_SCHEME) :].split("/")
    if len(parts) != 3:
        raise errors.InvalidInput(
            f"{field} must be tinker://<run_id>/<weights|sampler_weights>/<name>, got {path!r}", field=field
        )
    run_id, segment, name = parts
    if segment not in SEGMENTS:
        raise errors.InvalidInput(
            f"{field}: unknown segment {segment!r}; accepted: {sorted(SEGMENTS)}", field=field
        )
    check_name(run_id, field=field)
    check_name(name, field=field)
    return TinkerPath(run_id, segment, name)


def check_name(name: str, *, field: str) -> str:
    """Reject names that could escape their folder or break a tinker:// path. Pure."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in {".", ".."}:
        raise errors.InvalidInput(
            f"{field}: {name!r} is not a valid name (1-200 of letters, digits, '.', '_', '-', ':')", field=field
        )
    return name


def default_data_dir(environ: dict[str, str] | None = None) -> str:
    """`$XDG_DATA_HOME/loraplane` (or ~/.local/share/loraplane). Pure given `environ`."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local" / "share")
    return str(Path(base) / "loraplane")


def default_store_url(environ: dict[str, str] | None = None, *, data_dir: str | None = None) -> str:
    """`file://<data dir>/store`, the data dir defaulting to `default_data_dir`. Pure given `environ`."""
    return "file://" + str(Path(data_dir or default_data_dir(environ)) / "store")


def join(base: str, *parts: str) -> str:
    """Join URL parts with '/', whatever the scheme. Pure."""
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def run_url(store: str, run_id: str) -> str:
    return join(store, "runs", run_id)


def run_record_url(store: str, run_id: str) -> str:
    return join(run_url(store, run_id), "run.json")


def checkpoint_url(store: str, path: TinkerPath) -> str:
    """The folder that holds the checkpoint's files (what the runtime saves to and loads from)."""
    return join(run_url(store, path.run_id), path.segment, path.name)


def checkpoint_record_url(store: str, path: TinkerPath) -> str:
    return join(checkpoint_url(store, path), "checkpoint.json")


def sampler_record_url(store: str, sampler_id: str) -> str:
    return join(store, "samplers", f"{sampler_id}.json")


def session_record_url(store: str, session_id: str) -> str:
    return join(store, "sessions", f"{session_id}.json")


def sequences_url(store: str, session_id: str) -> str:
    """The folder of a session's sequences recorded for stable_reinforce (one JSON per sampling request)."""
    return join(store, "sequences", session_id)


def tenant_sessions_index_url(store: str, tenant: str) -> str:
    """Folder of a tenant's session markers: listing them reads one folder, not every session."""
    return join(store, "index", "tenants", tenant, "sessions")


def tenant_index_url(store: str, tenant: str, kind: str) -> str:
    """Folder of a tenant's markers of one kind ("runs", "samplers"): counted and listed cheaply."""
    return join(store, "index", "tenants", tenant, kind)


def open_sessions_index_url(store: str) -> str:
    """Folder of markers of the sessions not yet finished: what session expiry sweeps."""
    return join(store, "index", "open-sessions")


def session_samplers_index_url(store: str, session_id: str) -> str:
    return join(store, "index", "sessions", session_id)


def index_built_url(store: str) -> str:
    """Present once the indexes hold the records that stores written before them had."""
    return join(store, "index", "built.json")


def session_marker(record: dict[str, Any]) -> str:
    """The marker name of a session record: its creation time first, so names sort by age. Pure."""
    return f"{record.get('created') or ''}_{record['session_id']}"


def save_pending_url(store: str, path: TinkerPath) -> str:
    """Where a save's request metadata (user metadata, TTL) waits until its files are complete."""
    return join(run_url(store, path.run_id), "pending", f"{path.segment}.{path.name}.json")


def locate_checkpoint_url(url: str) -> tuple[str, TinkerPath] | None:
    """(store URL, tinker path) of a checkpoint folder URL `<store>/runs/<run>/<segment>/<name>`;
    None for any other URL. Pure; the inverse of `checkpoint_url` without knowing the store."""
    parts = url.rstrip("/").rsplit("/", 4)
    if len(parts) != 5 or parts[1] != "runs" or parts[3] not in SEGMENTS:
        return None
    if not (NAME_PATTERN.match(parts[2]) and NAME_PATTERN.match(parts[4])):
        return None
    return parts[0], TinkerPath(parts[2], parts[3], parts[4])


def tinker_path_for_url(store: str, url: str) -> TinkerPath | None:
    """The inverse of `checkpoint_url`; None for a URL outside the store's runs. Pure."""
    prefix = join(store, "runs") + "/"
    if not url.startswith(prefix):
        return None
    parts = url[len(prefix) :].strip("/").split("/")
    if len(parts) != 3 or parts[1] not in SEGMENTS:
        return None
    return TinkerPath(*parts)


def build_run_record(
    *, run_id: str, tenant: str, base_model: str, lora: dict[str, Any], now: str,
    user_metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The run.json body, written when a training run starts. Pure."""
    return {
        "training_run_id": run_id,
        "tenant": tenant,
        "base_model": base_model,
        "lora": lora,
        "created": now,
        "last_request_time": now,
        "user_metadata": user_metadata or {},
    }


def build_checkpoint_record(
    *, path: TinkerPath, now: str, size_bytes: int | None, step: int | None,
    user_metadata: dict[str, str] | None = None, expires_at: str | None = None,
) -> dict[str, Any]:
    """The checkpoint.json body, written once the runtime has saved the files. Pure."""
    return {
        "checkpoint_id": path.checkpoint_id,
        "checkpoint_type": path.checkpoint_type,
        "time": now,
        "size_bytes": size_bytes,
        "step": step,
        "user_metadata": user_metadata or {},
        "expires_at": expires_at,
    }


def expiry_time(now: str, ttl_seconds: int | None) -> str | None:
    """`expires_at` of a checkpoint saved at `now` (ISO-8601) with a TTL; None without one. Pure."""
    if not ttl_seconds:
        return None
    start = dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
    return (start + dt.timedelta(seconds=ttl_seconds)).isoformat().replace("+00:00", "Z")


def is_expired(record: dict[str, Any], now: str) -> bool:
    """Whether a checkpoint record's `expires_at` has passed at `now`. Pure; callers hide expired ones."""
    expires = record.get("expires_at")
    if not expires:
        return False
    try:
        return dt.datetime.fromisoformat(str(expires).replace("Z", "+00:00")) <= dt.datetime.fromisoformat(
            now.replace("Z", "+00:00"))
    except ValueError:
        return False


def store_error(exc: OSError, doing: str) -> errors.StoreUnavailable:
    """An OSError of a store write -> StoreUnavailable naming the cause, never the path. Pure.

    Paths are the server's business (and may name other tenants' runs); the cause is what a
    client and an operator need: the store is full, read-only, or refused the write.
    """
    causes = {
        errno.ENOSPC: "the artifact store is full", errno.EDQUOT: "the artifact store's quota is used up",
        errno.EROFS: "the artifact store is read-only", errno.EACCES: "the artifact store refused the write",
        errno.EPERM: "the artifact store refused the write",
    }
    cause = causes.get(exc.errno or 0) or f"the artifact store failed ({exc.strerror or type(exc).__name__})"
    return errors.StoreUnavailable(f"{cause} while {doing}; nothing was kept. Ask the operator to free or fix it, "
                                   "then retry")
