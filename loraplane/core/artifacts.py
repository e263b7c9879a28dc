"""The artifact-store layout, and the mapping between `tinker://` paths and store URLs.

Callers: the gateway (checkpoints, run and sampler records), the embedded control plane (job
records), the operator (declarative jobs and restores). The layout under the store URL:

    <store>/runs/<run_id>/run.json                          the training run's record
    <store>/runs/<run_id>/weights/<name>/                   a training state (docs/runtime-api.md)
    <store>/runs/<run_id>/sampler_weights/<name>/           a sampler snapshot
    <store>/runs/<run_id>/<segment>/<name>/checkpoint.json  the checkpoint's record
    <store>/samplers/<sampler_id>.json                      sampler records, shared by gateway replicas
    <store>/sessions/<session_id>.json                      Tinker session records
    <store>/jobs/<job_name>.json                            LoRAJobs of single-node mode

Design notes
============
The path and record functions are pure (no I/O, time passed in) so that every component computes
the same URL for the same checkpoint. `ArtifactStore` is the one thin I/O adapter over fsspec; it
knows nothing of tenants, which the gateway checks on the records it reads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

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


def default_store_url(environ: dict[str, str] | None = None) -> str:
    """`file://$XDG_DATA_HOME/loraplane/store` (or ~/.local/share/...). Pure given `environ`."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local" / "share")
    return "file://" + str(Path(base) / "loraplane" / "store")


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


def job_record_url(store: str, job_name: str) -> str:
    return join(store, "jobs", f"{job_name}.json")


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


class ArtifactStore:
    """Thin fsspec adapter: JSON records and folders under one store URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.url)

    def _path(self, url: str) -> str:
        return fsspec.core.url_to_fs(url)[1]

    def fs_path(self, url: str) -> str:
        """`url` as a path of `self.fs` (a local path for file://, `bucket/key` for s3://)."""
        return self._path(url)

    def read_json(self, url: str) -> dict[str, Any] | None:
        """The record at `url`, or None if it does not exist (or is not valid JSON)."""
        try:
            with self.fs.open(self._path(url), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return None

    def write_json(self, url: str, body: dict[str, Any]) -> None:
        """Write a record; on a local disk through a temporary file and rename, so readers never see half."""
        path = self._path(url)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        data = json.dumps(body, sort_keys=True).encode()
        tmp = f"{path}.tmp-{os.getpid()}"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)

    def exists(self, url: str) -> bool:
        return bool(self.fs.exists(self._path(url)))

    def delete(self, url: str) -> None:
        """Delete a file or a folder; a missing one is ignored."""
        path = self._path(url)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def size_bytes(self, url: str) -> int:
        """Total size of the files under a folder."""
        path = self._path(url)
        if not self.fs.exists(path):
            return 0
        return int(sum(info.get("size", 0) or 0 for info in self.fs.find(path, detail=True).values()))

    def children(self, url: str) -> list[str]:
        """Names of the entries directly under a folder (empty if it does not exist)."""
        path = self._path(url)
        if not self.fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def run_ids(self) -> list[str]:
        return self.children(join(self.url, "runs"))

    def checkpoints(self, run_id: str) -> list[TinkerPath]:
        """The run's checkpoints that have a record (those still being written have none)."""
        found = []
        for segment in SEGMENTS:
            for name in self.children(join(run_url(self.url, run_id), segment)):
                path = TinkerPath(run_id, segment, name)
                if self.exists(checkpoint_record_url(self.url, path)):
                    found.append(path)
        return found

    def records(self, folder: str) -> list[dict[str, Any]]:
        """Every JSON record directly under `<store>/<folder>/`."""
        out = []
        for name in self.children(join(self.url, folder)):
            if name.endswith(".json"):
                body = self.read_json(join(self.url, folder, name))
                if body is not None:
                    out.append(body)
        return out
