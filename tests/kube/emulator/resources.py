"""Resource types the emulator serves: the built-in ones and those registered by CRDs.

A :class:`ResourceType` holds everything the server needs to route, store, validate and
describe one resource in one API version. :data:`BUILTINS` is the fixed set of built-in
resources loraplane's components touch; :func:`from_crd` turns a CustomResourceDefinition
body into one ``ResourceType`` per served version. Both are pure; the registry that
holds them lives in :mod:`.server`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from . import statuses

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """One resource in one group/version, as routed, stored and listed in discovery."""

    group: str  #: "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    #: whether ``<plural>/status`` is a separate subresource (status kept apart from the main resource)
    status_subresource: bool = False
    #: whether metadata.generation is kept and bumped on spec changes
    has_generation: bool = False
    #: whether DELETE answers with the deleted object instead of a Status (CRs and pods do)
    returns_deleted_object: bool = False
    #: whether PUT without metadata.resourceVersion is allowed (not for custom resources)
    allows_unconditional_update: bool = True
    #: the CRD's openAPIV3Schema for this version (None for built-ins: no schema checks)
    schema: dict[str, Any] | None = None

    @property
    def api_version(self) -> str:
        """``v1`` or ``group/version``, as written in objects' ``apiVersion``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects are shared by all versions of one group/plural (no conversion is done)."""
        return (self.group, self.plural)


def _builtin(group: str, version: str, plural: str, kind: str, namespaced: bool, **extra: Any) -> ResourceType:
    return ResourceType(group, version, plural, kind.lower(), kind, namespaced, **extra)


BUILTINS: tuple[ResourceType, ...] = (
    _builtin("", "v1", "namespaces", "Namespace", False, short_names=("ns",), status_subresource=True,
             returns_deleted_object=True),
    _builtin("", "v1", "pods", "Pod", True, short_names=("po",), categories=("all",), status_subresource=True,
             has_generation=True, returns_deleted_object=True),
    _builtin("", "v1", "services", "Service", True, short_names=("svc",), categories=("all",),
             status_subresource=True, returns_deleted_object=True),
    _builtin("", "v1", "secrets", "Secret", True),
    _builtin("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    _builtin("", "v1", "events", "Event", True, short_names=("ev",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", True, short_names=("sa",)),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease", True),
    _builtin("events.k8s.io", "v1", "events", "Event", True, short_names=("ev",)),
    _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
             short_names=("crd", "crds"), categories=("api-extensions",), status_subresource=True,
             has_generation=True, returns_deleted_object=True),
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _crd_error(name: str, field: str, message: str, reason: str = "FieldValueInvalid") -> statuses.StatusError:
    return statuses.invalid("CustomResourceDefinition", "apiextensions.k8s.io", name,
                            [{"reason": reason, "field": field, "message": message}])


def from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CRD serves, one per served version; pure, called on CRD create and preload.

    Raises:
        StatusError: 422 naming the field when the CRD lacks what the real server requires
            (``metadata.name`` equal to ``<plural>.<group>``, names, scope, versions).
    """
    name = (crd.get("metadata") or {}).get("name", "")
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        raise _crd_error(name, "spec", "Required value", "FieldValueRequired")
    group = spec.get("group") or ""
    names = spec.get("names")
    if not isinstance(names, dict):
        raise _crd_error(name, "spec.names", "Required value", "FieldValueRequired")
    plural, kind = names.get("plural") or "", names.get("kind") or ""
    if not group:
        raise _crd_error(name, "spec.group", "Required value", "FieldValueRequired")
    if not plural or not _DNS_LABEL.match(plural):
        raise _crd_error(name, "spec.names.plural", f'Invalid value: "{plural}": must be a lowercase DNS label')
    if not kind:
        raise _crd_error(name, "spec.names.kind", "Required value", "FieldValueRequired")
    if name != f"{plural}.{group}":
        raise _crd_error(name, "metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        raise _crd_error(name, "spec.scope", f'Unsupported value: "{scope}": supported values: "Cluster", "Namespaced"',
                         "FieldValueNotSupported")
    versions = spec.get("versions") or []
    if not isinstance(versions, list) or not all(isinstance(version, dict) for version in versions):
        raise _crd_error(name, "spec.versions", "Invalid value: must be a list of versions")
    if not versions:
        raise _crd_error(name, "spec.versions", "Invalid value: null: must have exactly one version marked as storage version")
    if sum(1 for version in versions if version.get("storage")) != 1:
        raise _crd_error(name, "spec.versions", "Invalid value: must have exactly one version marked as storage version")
    resource_types = []
    for index, version in enumerate(versions):
        if not version.get("name"):
            raise _crd_error(name, f"spec.versions[{index}].name", "Required value", "FieldValueRequired")
        if not version.get("served", False):
            continue
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is not None and not isinstance(schema, dict):
            raise _crd_error(name, f"spec.versions[{index}].schema.openAPIV3Schema", "Invalid value: must be an object")
        resource_types.append(ResourceType(
            group=group,
            version=version["name"],
            plural=plural,
            singular=names.get("singular") or kind.lower(),
            kind=kind,
            namespaced=scope == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            status_subresource="status" in (version.get("subresources") or {}),
            has_generation=True,
            returns_deleted_object=True,
            allows_unconditional_update=False,
            schema=schema,
        ))
    return resource_types


def version_priority(version: str) -> tuple[int, int, int]:
    """Sort key for Kubernetes version names (v1 > v1beta2 > v1beta1 > v1alpha1 > other); pure.

    Used for each group's ``preferredVersion`` in discovery, as the real server orders them.
    """
    match = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if not match:
        return (0, 0, 0)
    stability = {"alpha": 1, "beta": 2, None: 3}[match[2]]
    return (stability, int(match[1]), int(match[3] or 0))


def accepted_crd_status(crd: dict[str, Any]) -> dict[str, Any]:
    """The status a freshly registered CRD gets: names accepted and Established, as the real server reports."""
    names = dict((crd.get("spec") or {}).get("names") or {})
    names.setdefault("singular", str(names.get("kind", "")).lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    condition = {"lastTransitionTime": (crd.get("metadata") or {}).get("creationTimestamp")}
    return {
        "acceptedNames": names,
        "conditions": [
            {**condition, "type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found"},
            {**condition, "type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted"},
        ],
        "storedVersions": [v["name"] for v in (crd.get("spec") or {}).get("versions", []) if v.get("storage")],
    }
