"""The artifact store: JSON records and folders under one fsspec URL (`file://` or `s3://`).

Callers: the gateway (records, saves, exports), the runtime (checkpoints, save records), the
control plane (declarative runs' records, saved states) and the commands' start-up checks
(`open_store`). Where things live in the store is `loraplane.core.artifacts`, which holds no I/O.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import fsspec
from fsspec.registry import known_implementations, registry

from loraplane.core import errors
from loraplane.core.artifacts import (
    SEGMENTS,
    TinkerPath,
    build_checkpoint_record,
    checkpoint_record_url,
    expiry_time,
    join,
    locate_checkpoint_url,
    run_url,
    save_pending_url,
    store_error,
)


def record_saved_checkpoint(dest: str, *, now: str, step: int | None, size_bytes: int | None) -> bool:
    """Write checkpoint.json beside a checkpoint whose files are complete, from the save's pending
    request (user metadata, TTL). Idempotent; False when `dest` is not a checkpoint folder of a
    store. I/O; called by the runtime right after a save (so a finished save is listed even if its
    result is never fetched) and by the gateway when it translates the save's result."""
    located = locate_checkpoint_url(dest)
    if located is None:
        return False
    store_url, path = located
    store = ArtifactStore(store_url)
    pending_url = save_pending_url(store_url, path)
    pending = store.read_json(pending_url) or {}
    record_url = checkpoint_record_url(store_url, path)
    existing = store.read_json(record_url)
    if existing is None or existing.get("step") != step:
        store.write_json(record_url, build_checkpoint_record(
            path=path, now=now, size_bytes=size_bytes, step=step, user_metadata=pending.get("user_metadata"),
            expires_at=expiry_time(now, pending.get("ttl_seconds")),
        ))
    store.delete(pending_url)
    return True


class ArtifactStore:
    """Thin fsspec adapter: JSON records and folders under one store URL.

    Write failures (full, read-only) raise `errors.StoreUnavailable` without the path.
    """

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
        data = json.dumps(body, sort_keys=True).encode()
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        except OSError as exc:
            self._discard(tmp)
            raise store_error(exc, "writing a record") from None

    def _discard(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except OSError:
            pass

    def touch(self, url: str) -> None:
        """Create an empty marker file (and its folders)."""
        path = self._path(url)
        try:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(path, b"")
        except OSError as exc:
            raise store_error(exc, "writing an index entry") from None

    def exists(self, url: str) -> bool:
        return bool(self.fs.exists(self._path(url)))

    def delete(self, url: str) -> None:
        """Delete a file or a folder; a missing one is ignored."""
        path = self._path(url)
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise store_error(exc, "deleting") from None

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


def open_store(url: str) -> ArtifactStore:
    """The store at `url`, checked the way a command checks it at start-up.

    Called by `loraplane serve`, `gateway` and `operator` before they listen, so that a wrong URL
    is one line at start instead of a failed first call. A local folder is created when missing
    and must be writable; remote stores are not contacted here. Raises InvalidInput(field="store").
    """
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol is not None and protocol not in known_implementations \
            and protocol not in registry:
        raise errors.InvalidInput(
            f"--store {url!r}: unknown scheme '{protocol}://'; use a folder path, file:///path or s3://bucket/prefix",
            field="store")
    try:
        store = ArtifactStore(url)
    except ImportError as exc:
        extra = "s3" if protocol in ("s3", "s3a") else None
        hint = "pip install 'loraplane[s3]'" if extra else str(exc)
        raise errors.InvalidInput(f"--store {url!r}: {protocol}:// stores need a driver that is not installed: {hint}",
                                  field="store") from None
    except ValueError as exc:
        raise errors.InvalidInput(f"--store {url!r}: {exc}", field="store") from None
    if protocol in (None, "file", "local"):
        _check_local_folder(url, store._root)
    return store


def _check_local_folder(url: str, root: str) -> None:
    folder = Path(root)
    if folder.exists() and not folder.is_dir():
        raise errors.InvalidInput(f"--store {url!r} is a file; pass a folder (it is created if missing)",
                                  field="store")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.InvalidInput(f"--store {url!r}: cannot create the folder: {exc.strerror}", field="store") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise errors.InvalidInput(f"--store {url!r}: the folder is not writable by this user", field="store")
