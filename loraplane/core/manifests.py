"""LoRAJob manifests as users write them: checked against the schema the CRD is generated from.

Callers: the gateway's control planes, for `loraplane jobs apply` (single-node mode stores the
result itself; on a cluster the API server checks it again, with the same rules).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from loraplane.core import errors
from loraplane.core.models.v1alpha1.lorajob import API_VERSION, KIND, LoRAJob, LoRAJobSpec

#: A Kubernetes object name (a DNS-1123 subdomain).
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def immutable_spec_fields() -> list[str]:
    """The spec fields (camelCase) that the CRD marks immutable (`self == oldSelf`). Pure."""
    schema = LoRAJobSpec.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    out = []
    for key, prop in schema.get("properties", {}).items():
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        rules = prop.get("x-kubernetes-validations", []) + defs.get(ref, {}).get("x-kubernetes-validations", [])
        if any(r.get("rule") == "self == oldSelf" for r in rules):
            out.append(key)
    return out


def validated(manifest: Mapping[str, Any], *, namespace: str) -> LoRAJob:
    """The manifest as a LoRAJob in `namespace`, or `InvalidInput` naming every bad field. Pure."""
    if manifest.get("apiVersion", API_VERSION) != API_VERSION or manifest.get("kind", KIND) != KIND:
        raise errors.InvalidInput(f"expected apiVersion {API_VERSION} and kind {KIND}, got "
                                  f"{manifest.get('apiVersion')} {manifest.get('kind')}", field="kind")
    meta = manifest.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        raise errors.InvalidInput("metadata.name is required", field="metadata.name")
    name = meta["name"]
    if not isinstance(name, str) or len(name) > 253 or not NAME.fullmatch(name):
        raise errors.InvalidInput(f"metadata.name {name!r} must be lower-case letters, digits, '-' and '.', "
                                  "starting and ending with a letter or digit, at most 253 characters",
                                  field="metadata.name")
    if meta.get("namespace") not in (None, namespace):
        raise errors.InvalidInput(f"namespace {meta['namespace']!r}: this gateway's jobs live in namespace "
                                  f"{namespace!r}; leave metadata.namespace out", field="metadata.namespace")
    for key in ("labels", "annotations"):
        if not isinstance(meta.get(key) or {}, Mapping):
            raise errors.InvalidInput(f"metadata.{key} must be a map of strings", field=f"metadata.{key}")
    if not isinstance(manifest.get("spec"), Mapping):
        raise errors.InvalidInput("spec is required", field="spec")
    body = {"apiVersion": API_VERSION, "kind": KIND, "spec": manifest["spec"],
            "metadata": {"name": name, "namespace": namespace,
                         "labels": dict(meta.get("labels") or {}), "annotations": dict(meta.get("annotations") or {})}}
    try:
        return LoRAJob.from_body(body)
    except ValidationError as exc:
        raise errors.invalid_input(exc.errors(), every=True) from None
