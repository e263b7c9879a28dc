"""Export download grants: signing, checking, the shared key, and presigned URLs of object stores."""

from __future__ import annotations

import types
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from loraplane.api import exports
from loraplane.clients import artifact_store
from loraplane.core import age, artifacts, errors

KEY = b"k" * 32
PATH = artifacts.TinkerPath("s-1:train:0", "external_weights", "final")
GOOD = exports.signature(KEY, "alice", PATH, "adapter_config.json", 2000)


@pytest.mark.parametrize(
    ("tenant", "file", "expires", "sig", "words"),
    [
        ("alice", "adapter_config.json", None, None, "not signed"),
        ("", "adapter_config.json", "2000", GOOD, "not signed"),
        ("alice", "adapter_config.json", "20x0", GOOD, "malformed"),
        ("bob", "adapter_config.json", "2000", GOOD, "does not match"),
        ("alice", "adapter_model.safetensors", "2000", GOOD, "does not match"),
        ("alice", "adapter_config.json", "2001", GOOD, "does not match"),
        ("alice", "adapter_config.json", "2000", GOOD.upper(), "does not match"),
    ],
)
def test_a_grant_that_is_not_exactly_the_signed_one_is_refused(tenant, file, expires, sig, words):
    with pytest.raises(errors.Forbidden, match=words):
        exports.check_grant(KEY, tenant, PATH, file, expires, sig, now=1000.0)


def test_a_signed_grant_is_admitted_until_it_expires():
    exports.check_grant(KEY, "alice", PATH, "adapter_config.json", "2000", GOOD, now=1999.0)
    with pytest.raises(errors.Forbidden, match="expired"):
        exports.check_grant(KEY, "alice", PATH, "adapter_config.json", "2000", GOOD, now=2000.0)


def test_the_store_key_is_created_once_and_shared(tmp_path: Path):
    store = artifact_store.ArtifactStore(f"file://{tmp_path}")
    first = exports.signing_key(store, None)
    assert len(first) == 64 and exports.signing_key(artifact_store.ArtifactStore(f"file://{tmp_path}"), None) == first
    assert exports.signing_key(store, "configured") == b"configured"


class _SigningMemory(MemoryFileSystem):
    """An object store stand-in whose `sign` makes presigned URLs, as s3fs and gcsfs do."""

    protocol = "signingmem"

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return "/" + path.removeprefix("signingmem://").lstrip("/")

    def sign(self, path: str, expiration: int = 100, **kwargs: object) -> str:
        return f"https://objects.example/{path.lstrip('/')}?X-Expires={expiration}"


def test_object_stores_hand_out_their_own_presigned_urls():
    fsspec.register_implementation("signingmem", _SigningMemory, clobber=True)
    store = artifact_store.ArtifactStore("signingmem://bucket")
    folder = artifacts.checkpoint_url(store.url, PATH)
    for name in ("adapter_config.json", "adapter_model.safetensors", "checkpoint.json"):
        store.fs.pipe_file(store.fs_path(artifacts.join(folder, name)), b"x")
    checked = []
    gw = types.SimpleNamespace(store=store, records=types.SimpleNamespace(
        checkpoint=lambda tenant, path, field: checked.append((tenant, path))))
    out = exports.external_urls(gw, "alice", PATH, "http://gw/", KEY, now=0.0)
    assert checked == [("alice", PATH)]
    assert sorted(out["urls"]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert out["urls"]["adapter_config.json"].startswith("https://objects.example/bucket/runs/s-1:train:0/")
    assert out["urls"]["adapter_config.json"].endswith(f"X-Expires={exports.URL_TTL_S}")
    assert out["expires"] == "1970-01-01T01:00:00Z"


def test_urls_exist_only_for_external_weights():
    with pytest.raises(errors.InvalidInput):
        exports.external_urls(types.SimpleNamespace(), "alice", artifacts.TinkerPath("r", "weights", "n"), "", KEY)


@pytest.mark.parametrize("bad", ["age1notakey", "ssh-ed25519 AAAAnotbase64", "hello", ""])
def test_bad_age_recipients_are_refused_naming_the_entry(bad: str):
    with pytest.raises(errors.InvalidInput) as info:
        age.parse_recipients([bad])
    assert info.value.field == "age_encryption_recipients[0]"
