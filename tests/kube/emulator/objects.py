"""Decisions about object bodies on create, update and delete.

Pure functions called by :mod:`.server`'s handlers: they take the stored and requested
bodies plus the values that vary (uid, time, random suffix) and return the body to store
or raise :class:`~.statuses.StatusError`. Keeping them free of I/O makes the real
server's rules testable one by one:

- ``metadata.generation`` starts at 1 and grows only when something other than
  ``metadata`` (and ``status``, where status is a subresource) changes;
- with a status subresource, writes to the main resource keep the stored ``.status`` and
  writes to ``/status`` change nothing but ``.status``;
- system metadata (uid, creationTimestamp, deletionTimestamp, ...) cannot be changed
  by clients, and no finalizer can be added once deletion has started.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from . import statuses
from .resources import ResourceType

#: Alphabet of generateName suffixes (the real server avoids vowels and look-alikes).
SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

_SYSTEM_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                    "generation", "name", "namespace")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _invalid(rt: ResourceType, name: str, field: str, message: str, reason: str = "FieldValueInvalid") -> Exception:
    return statuses.invalid(rt.kind, rt.group, name, [{"reason": reason, "field": field, "message": message}])


def check_identity(rt: ResourceType, body: Any, namespace: str, name: str | None) -> None:
    """Refuse bodies that are not objects of this resource or disagree with the URL; pure.

    Called by create and update handlers before anything else.

    Raises:
        StatusError: 400 for a non-object body, a wrong kind/apiVersion, or a name or
            namespace that differs from the URL's.
    """
    if not isinstance(body, dict):
        raise statuses.bad_request("the body of the request was not a JSON object")
    kind, api_version = body.get("kind"), body.get("apiVersion")
    for field, value in (("kind", kind), ("apiVersion", api_version)):
        if value is not None and not isinstance(value, str):
            raise statuses.bad_request(f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                                       f".{field} of type string")
    if kind is not None and kind != rt.kind:
        raise statuses.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                   f"API version ({rt.api_version}) or the kind ({kind}) does not match {rt.kind}")
    if api_version is not None and api_version.split("/")[0] != rt.api_version.split("/")[0]:
        raise statuses.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                   f"API version ({rt.api_version})")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise statuses.bad_request("metadata must be an object")
    metadata = metadata or {}
    check_metadata_types(metadata)
    body_ns = metadata.get("namespace")
    if rt.namespaced and body_ns and body_ns != namespace:
        raise statuses.bad_request("the namespace of the provided object does not match the namespace sent on "
                                   "the request")
    if name is not None and metadata.get("name") and metadata["name"] != name:
        raise statuses.bad_request(f"the name of the object ({metadata['name']}) does not match the name on the "
                                   f"URL ({name})")


_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def label_causes(labels: dict[str, str]) -> list[dict[str, str]]:
    """Causes for label keys and values the real server refuses (422); pure, called on create and update."""
    causes = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or len(name) > 63 \
                or not _LABEL_NAME.match(name):
            causes.append({"reason": "FieldValueInvalid", "field": "metadata.labels",
                           "message": f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                                      "'-', '_' or '.', and must start and end with an alphanumeric character, "
                                      "with an optional DNS subdomain prefix and '/'"})
        if len(value) > 63 or (value and not _LABEL_NAME.match(value)):
            causes.append({"reason": "FieldValueInvalid", "field": "metadata.labels",
                           "message": f'Invalid value: "{value}": a valid label must be an empty string or consist '
                                      "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                      "alphanumeric character, at most 63 characters"})
    return causes


def _check_labels(rt: ResourceType, metadata: dict[str, Any]) -> None:
    causes = label_causes(metadata.get("labels") or {})
    if causes:
        raise statuses.invalid(rt.kind, rt.group, str(metadata.get("name", "")), causes)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number"}.get(
        type(value), "null")


#: ObjectMeta fields whose JSON type the real server enforces when decoding: field -> (check, Go type).
_METADATA_TYPES: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str), "string"),
    "generateName": (lambda v: isinstance(v, str), "string"),
    "namespace": (lambda v: isinstance(v, str), "string"),
    "resourceVersion": (lambda v: isinstance(v, str), "string"),
    "uid": (lambda v: isinstance(v, str), "types.UID"),
    "labels": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()), "map[string]string"),
    "annotations": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                    "map[string]string"),
    "finalizers": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "[]string"),
    "ownerReferences": (lambda v: isinstance(v, list) and all(isinstance(x, dict) and isinstance(x.get("uid"), str)
                                                              for x in v), "[]v1.OwnerReference"),
}


def check_metadata_types(metadata: dict[str, Any]) -> None:
    """Refuse metadata whose fields have the wrong JSON types, as the server's decoder does; pure.

    Raises:
        StatusError: 400 naming the field (``metadata.labels``) and the expected Go type.
    """
    for field, (is_ok, go_type) in _METADATA_TYPES.items():
        if metadata.get(field) is not None and not is_ok(metadata[field]):
            raise statuses.bad_request(f"json: cannot unmarshal {_json_type(metadata[field])} into Go struct field "
                                       f"ObjectMeta.metadata.{field} of type {go_type}")


def prepare_create(rt: ResourceType, body: dict[str, Any], *, namespace: str, uid: str, now: str,
                   suffix: str) -> dict[str, Any]:
    """The object to store for a create; pure, called by the create handler.

    Args:
        namespace: the URL's namespace ("" for cluster-scoped resources).
        uid, now: the new object's uid and creationTimestamp.
        suffix: five random characters for ``generateName``.

    Raises:
        StatusError: 422 when neither a valid name nor generateName is given.
    """
    obj = copy.deepcopy(body)
    obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
    metadata = obj.setdefault("metadata", {})
    if not metadata.get("name"):
        if not metadata.get("generateName"):
            raise _invalid(rt, "", "metadata.name", "Required value: name or generateName is required",
                           "FieldValueRequired")
        metadata["name"] = metadata["generateName"] + suffix
    name = metadata["name"]
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise _invalid(rt, str(name), "metadata.name",
                       f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                       "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
    _check_labels(rt, metadata)
    for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "managedFields"):
        metadata.pop(key, None)
    if rt.namespaced:
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    metadata["uid"] = uid
    metadata["creationTimestamp"] = now
    if rt.has_generation:
        metadata["generation"] = 1
    else:
        metadata.pop("generation", None)
    if rt.status_subresource:
        obj.pop("status", None)
        if (rt.group, rt.plural) == ("", "pods"):
            obj["status"] = {"phase": "Pending"}
        if (rt.group, rt.plural) == ("", "namespaces"):
            obj["status"] = {"phase": "Active"}
    return obj


def _content(obj: dict[str, Any], without_status: bool) -> dict[str, Any]:
    skipped = {"metadata", "apiVersion", "kind"} | ({"status"} if without_status else set())
    return {key: value for key, value in obj.items() if key not in skipped}


def prepare_update(rt: ResourceType, old: dict[str, Any], new: dict[str, Any], *,
                   subresource: str | None) -> dict[str, Any]:
    """The object to store for an update or patch; pure, called by update and patch handlers.

    Args:
        old: the stored object.
        new: the requested full body (after a patch was applied, for patches).
        subresource: ``"status"`` for writes to ``/status``, else None.

    Raises:
        StatusError: 422 when a finalizer is added to an object being deleted.
    """
    if subresource == "status":
        result = copy.deepcopy(old)
        if "status" in new:
            result["status"] = copy.deepcopy(new["status"])
        else:
            result.pop("status", None)
        result["metadata"].pop("resourceVersion", None)
        return result
    result = copy.deepcopy(new)
    result["apiVersion"], result["kind"] = rt.api_version, rt.kind
    metadata = result.setdefault("metadata", {})
    for key in _SYSTEM_METADATA:
        if key in old["metadata"]:
            metadata[key] = old["metadata"][key]
        else:
            metadata.pop(key, None)
    metadata.pop("resourceVersion", None)
    _check_labels(rt, metadata)
    if rt.status_subresource:
        if "status" in old:
            result["status"] = copy.deepcopy(old["status"])
        else:
            result.pop("status", None)
    if rt.has_generation and _content(old, rt.status_subresource) != _content(result, rt.status_subresource):
        metadata["generation"] = old["metadata"].get("generation", 1) + 1
    if old["metadata"].get("deletionTimestamp"):
        added = [f for f in metadata.get("finalizers") or [] if f not in (old["metadata"].get("finalizers") or [])]
        if added:
            listed = ", ".join(f'"{f}"' for f in added)
            raise _invalid(rt, metadata["name"], "metadata.finalizers",
                           f"Forbidden: no new finalizers can be added if the object is being deleted, found new "
                           f"finalizers []string{{{listed}}}", "FieldValueForbidden")
    return result


def check_resource_version(rt: ResourceType, current: dict[str, Any], requested: Any, *, required: bool) -> None:
    """Optimistic concurrency: a given resourceVersion must equal the stored one; pure.

    Args:
        requested: ``metadata.resourceVersion`` from the body or patch (None if absent).
        required: True for PUT on resources that refuse unconditional updates.

    Raises:
        StatusError: 409 Conflict on a stale version; 422 when one is required but absent.
    """
    name = current["metadata"]["name"]
    if requested in (None, ""):
        if required and not rt.allows_unconditional_update:
            raise _invalid(rt, name, "metadata.resourceVersion",
                           "Invalid value: 0x0: must be specified for an update")
        return
    if str(requested) != current["metadata"]["resourceVersion"]:
        raise statuses.conflict(rt.plural, rt.group, name)


def mark_deleting(obj: dict[str, Any], now: str) -> dict[str, Any]:
    """The object with deletion started (kept while finalizers remain); pure, called by DELETE."""
    result = copy.deepcopy(obj)
    metadata = result["metadata"]
    if not metadata.get("deletionTimestamp"):
        metadata["deletionTimestamp"] = now
        metadata["deletionGracePeriodSeconds"] = 0
        if metadata.get("generation"):
            metadata["generation"] += 1  # the real server counts the start of deletion as a change
    return result


def is_released(obj: dict[str, Any]) -> bool:
    """Whether an object being deleted has lost its last finalizer and must go now; pure."""
    metadata = obj["metadata"]
    return bool(metadata.get("deletionTimestamp")) and not metadata.get("finalizers")


def owner_uids(obj: dict[str, Any]) -> set[str]:
    """The uids in an object's ownerReferences; pure, used by garbage collection."""
    return {ref.get("uid") for ref in (obj["metadata"].get("ownerReferences") or []) if ref.get("uid")}
