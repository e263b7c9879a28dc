"""Weights exports: `save_weights_external` and the signed URLs that download its files.

Callers: `routes.exports` (one function per call), `futures.translate` (the `save_external` op's
result is a save like the others).

Design notes
============
* An export is a plain PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`)
  under `tinker://<run>/external_weights/<name>`, which `PeftModel.from_pretrained` loads as is.
  With `age_encryption_recipients` the runtime encrypts each file (pyrage) and writes only the
  `.age` files; the recipients are checked here first, so a bad key is a 400 at submit time.
* On a `file://` store the gateway serves the bytes itself. Each URL carries the tenant, the
  expiry time and an HMAC-SHA256 over (tenant, run, name, file, expiry) made with a key only the
  gateways know; the file route needs no API key (download tools send none) but answers 403
  unless the signature is valid, unexpired, and the signed tenant still owns the run. Another
  tenant cannot forge a URL (no key) or reuse one (the tenant is part of what is signed).
* On any other store (`s3://`, ...) the URLs are the store's own presigned URLs (`fs.sign`).
* The signing key comes from `gateway.url_signing_key` when set; otherwise from a random key kept in
  the store (`<store>/.gateway/url-signing-key`), created by the first gateway that needs it, so
  every replica of one store signs alike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
import urllib.parse
from typing import Any

from pydantic import Field

from loraplane.api import ids
from loraplane.api.protocol import _Body
from loraplane.clients import artifact_store
from loraplane.core import age, artifacts, errors
from loraplane.core.runtime_ops import OpBody, OpKind

#: Lifetime of a download URL; the cookbook asks for new ones when they are about to expire.
URL_TTL_S = 3600
#: Files of a checkpoint folder that are bookkeeping, never part of an export.
_RECORD_FILES = frozenset({"checkpoint.json"})


class SaveWeightsExternal(_Body):
    model_id: str
    path: str
    seq_id: int | None = None
    ttl_seconds: int | None = Field(None, ge=0)
    age_encryption_recipients: list[str] | None = None


# ---- signing (pure) ---------------------------------------------------------------------------

def signature(key: bytes, tenant: str, path: artifacts.TinkerPath, file: str, expires: int) -> str:
    """Hex HMAC-SHA256 of one file's download grant. Pure."""
    message = "\n".join((tenant, path.run_id, path.segment, path.name, file, str(expires))).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def check_grant(key: bytes, tenant: str, path: artifacts.TinkerPath, file: str, expires: str | None,
                sig: str | None, now: float) -> None:
    """Raise Forbidden unless (tenant, expires, sig) is a valid, unexpired grant for the file. Pure."""
    if not tenant or not expires or not sig:
        raise errors.Forbidden("this URL is not signed; ask external_weights_urls for a signed one")
    if not expires.isdigit():
        raise errors.Forbidden("the URL's expiry is malformed; ask external_weights_urls for a new one")
    if not hmac.compare_digest(signature(key, tenant, path, file, int(expires)), sig):
        raise errors.Forbidden("the URL's signature does not match; ask external_weights_urls for a new one")
    if int(expires) <= now:
        raise errors.Forbidden("the URL has expired; ask external_weights_urls for a new one")


def signing_key(store: artifact_store.ArtifactStore, configured: str | None) -> bytes:
    """The URL signing key: the configured one, else the store's (created once, shared by replicas)."""
    if configured:
        return configured.encode()
    url = artifacts.join(store.url, ".gateway", "url-signing-key.json")
    record = store.read_json(url)
    if record is None or not isinstance(record.get("key"), str):
        store.write_json(url, {"key": secrets.token_hex(32)})
        record = store.read_json(url) or {}
    return str(record["key"]).encode()


# ---- the calls --------------------------------------------------------------------------------

async def save_weights_external(gw: Any, tenant: str, body: SaveWeightsExternal) -> dict[str, Any]:
    """Submit the export; the future resolves to `{"path": tinker://.../external_weights/<name>}`."""
    ref = gw.owned_runtime(tenant, body.model_id)
    name = artifacts.check_name(body.path, field="path")
    recipients = list(body.age_encryption_recipients or [])
    if recipients:
        age.parse_recipients(recipients)
    path = artifacts.TinkerPath(body.model_id, "external_weights", name)
    dest = await gw.reserve_save(tenant, path, overwrite=True, ttl_seconds=body.ttl_seconds, user_metadata=None)
    op = OpBody(seq_id=body.seq_id, op=OpKind.SAVE_EXTERNAL, dest=dest, age_recipients=recipients or None)
    rid = await gw.runtimes.submit_op(ref.address, gw.adapter(body.model_id), op)
    return {"request_id": ids.FutureRef(ids.owner_key(body.model_id), ref.pod, OpKind.SAVE_EXTERNAL, rid).encode(),
            "model_id": body.model_id}


def export_files(store: artifact_store.ArtifactStore, path: artifacts.TinkerPath) -> list[str]:
    """Names of the exported files (the checkpoint folder less its record)."""
    return [n for n in store.children(artifacts.checkpoint_url(store.url, path)) if n not in _RECORD_FILES]


def external_urls(gw: Any, tenant: str, path: artifacts.TinkerPath, base_url: str, key: bytes,
                  now: float | None = None) -> dict[str, Any]:
    """`ExternalWeightsUrlsResponse`: one signed URL per file and their common expiry."""
    if path.segment != "external_weights":
        raise errors.InvalidInput("download URLs exist only for external_weights checkpoints", field="checkpoint_id")
    gw.records.checkpoint(tenant, path, field="checkpoint_id")
    files = export_files(gw.store, path)
    expires = int((time.time() if now is None else now) + URL_TTL_S)
    urls: dict[str, str] = {}
    if gw.store.url.startswith("file://"):
        root = base_url.rstrip("/")
        for name in files:
            query = urllib.parse.urlencode({
                "tenant": tenant, "expires": str(expires), "sig": signature(key, tenant, path, name, expires),
            })
            quoted = "/".join(urllib.parse.quote(p, safe="") for p in (path.run_id, path.name, name))
            urls[name] = f"{root}/api/v1/external_weights_files/{quoted}?{query}"
    else:
        fs = gw.store.fs
        folder = artifacts.checkpoint_url(gw.store.url, path)
        for name in files:
            urls[name] = fs.sign(gw.store.fs_path(artifacts.join(folder, name)), expiration=URL_TTL_S)
    when = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat().replace("+00:00", "Z")
    return {"urls": urls, "expires": when}


def file_for_grant(gw: Any, path: artifacts.TinkerPath, file: str, tenant: str, expires: str | None,
                   sig: str | None, key: bytes) -> str:
    """The local path of one exported file, once its grant checks out (403 / 404 otherwise)."""
    check_grant(key, tenant, path, file, expires, sig, time.time())
    gw.records.checkpoint(tenant, path, field="checkpoint_id")
    if file not in export_files(gw.store, path):
        raise errors.NotFound(f"no file {file!r} in {str(path)!r}", field="file")
    return gw.store.fs_path(artifacts.join(artifacts.checkpoint_url(gw.store.url, path), file))
