"""The emulated cluster: resource types, objects and the write paths the real server follows.

:class:`Cluster` is framework-free and synchronous; the aiohttp adapter in :mod:`.server`
parses requests, calls one method per verb and writes the result, and the test-facing
:class:`~.emulator.KubeEmulator` calls the same methods to preload objects. Because every
method runs to completion on the emulator's event loop without awaiting, each one is
atomic with respect to the others and to the watch fan-out.

Write path (create, update, patch): identity checks, optimistic concurrency, the body
decisions of :mod:`.objects`, then for custom resources pruning, defaulting and schema
validation (:mod:`.schemas`), then the store. A write that changes nothing is not
stored (no new resourceVersion, no watch event), as on the real server.

Delete path: objects with finalizers get ``deletionTimestamp`` and stay until an update
removes the last finalizer; others go at once. Removing an object schedules garbage
collection of its dependents (through ``defer``, so it runs after the response, as the
real server's background propagation does), removing a CRD unregisters its resources
and deletes its objects, and removing a namespace deletes what it holds.
"""

from __future__ import annotations

import copy
import datetime
import random
import uuid
from collections.abc import Callable
from typing import Any

from . import objects, patches, resources, schemas, selectors, statuses
from .resources import ResourceType
from .store import ObjectStore

CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
ORPHAN = "orphan"  #: the finalizer of propagationPolicy=Orphan
FOREGROUND = "foregroundDeletion"  #: the finalizer of propagationPolicy=Foreground
NAMESPACE_KEY = ("", "namespaces")


#: Patch content types the server accepts (strategic merge patch is applied as a merge patch).
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json")


def unsupported_patch_type() -> statuses.StatusError:
    """415 for server-side apply and any other patch type, worded as the real server words it."""
    return statuses.StatusError("UnsupportedMediaType", "the body of the request was in an unknown format - "
                                f"accepted media types include: {', '.join(PATCH_TYPES)}", code=415)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Cluster:
    """Resource types and objects, with the real server's rules for every verb.

    Args:
        history_size: watch events kept for resuming.
        clock: returns the current time (for timestamps); injectable for tests.
        rng: the source of generateName suffixes.
        defer: runs a callable after the current request (``loop.call_soon`` in the server);
            by default it runs it at once.
    """

    def __init__(
        self,
        history_size: int = 1000,
        clock: Callable[[], datetime.datetime] = _utc_now,
        rng: random.Random | None = None,
        defer: Callable[[Callable[[], None]], Any] | None = None,
    ) -> None:
        self.store = ObjectStore(history_size)  #: objects, history and watch subscriptions
        self.types: dict[tuple[str, str, str], ResourceType] = {
            (rt.group, rt.version, rt.plural): rt for rt in resources.BUILTINS
        }  #: served resource types by (group, version, plural)
        self.clock = clock
        self.rng = rng or random.Random()
        self.defer = defer or (lambda callback: callback())

    # -- lookup ---------------------------------------------------------------------------------

    def resource_type(self, group: str, version: str, plural: str) -> ResourceType:
        """The served resource type, or 404 as the real server answers an unknown path."""
        rt = self.types.get((group, version, plural))
        if rt is None:
            raise statuses.StatusError("NotFound", "the server could not find the requested resource",
                                       {"group": group, "kind": plural})
        return rt

    def find_kind(self, api_version: str, kind: str) -> ResourceType:
        """The resource type for an object's apiVersion and kind (for preloading manifests)."""
        group, _, version = api_version.rpartition("/")
        for rt in self.types.values():
            if rt.group == group and rt.version == version and rt.kind == kind:
                return rt
        raise statuses.StatusError("NotFound", f'no matches for kind "{kind}" in version "{api_version}"')

    def _now(self) -> str:
        return self.clock().astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _view(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """An object as served at the requested version (no conversion: only apiVersion changes)."""
        result = copy.deepcopy(obj)
        result["apiVersion"] = rt.api_version
        return result

    def _key_ns(self, rt: ResourceType, namespace: str | None) -> str:
        return (namespace or "") if rt.namespaced else ""

    def _require(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get(rt.storage_key, self._key_ns(rt, namespace), name)
        if obj is None:
            raise statuses.not_found(rt.plural, rt.group, name)
        return obj

    # -- read -----------------------------------------------------------------------------------

    def read(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        """GET of one object."""
        return self._view(rt, self._require(rt, namespace, name))

    def list(self, rt: ResourceType, namespace: str | None, label_selector: str = "",
             field_selector: str = "") -> tuple[list[dict[str, Any]], str]:
        """Matching objects and the list's resourceVersion (the current global one)."""
        labels = selectors.parse_label_selector(label_selector)
        fields = selectors.parse_field_selector(field_selector, rt.group, rt.plural)
        items = [self._view(rt, obj) for obj in self.store.iter_objects(rt.storage_key, namespace)
                 if selectors.labels_match(labels, obj) and selectors.fields_match(fields, obj)]
        return items, str(self.store.resource_version)

    # -- write ----------------------------------------------------------------------------------

    def _check_schema(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        """Prune, default and validate a custom resource; 422 listing every violation."""
        if rt.schema is None:
            return obj
        result = schemas.apply_defaults(schemas.prune(obj, rt.schema), rt.schema)
        causes = schemas.validate(result, rt.schema, "", old if old is not None else schemas.cel.MISSING)
        if causes:
            raise statuses.invalid(rt.kind, rt.group, result["metadata"].get("name", ""), causes)
        return result

    def create(self, rt: ResourceType, namespace: str | None, body: Any) -> dict[str, Any]:
        """POST to a collection; returns the stored object (the handler answers 201)."""
        namespace = self._key_ns(rt, namespace)
        objects.check_identity(rt, body, namespace, None)
        if rt.namespaced:
            ns_obj = self.store.get(NAMESPACE_KEY, "", namespace)
            if ns_obj is None:
                raise statuses.not_found("namespaces", "", namespace)
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise statuses.StatusError(
                    "Forbidden", f'{rt.plural} "{(body.get("metadata") or {}).get("name", "")}" is forbidden: unable '
                    f"to create new content in namespace {namespace} because it is being terminated", code=403)
        suffix = "".join(self.rng.choice(objects.SUFFIX_ALPHABET) for _ in range(5))
        obj = objects.prepare_create(rt, body, namespace=namespace, uid=str(uuid.UUID(int=self.rng.getrandbits(128),
                                     version=4)), now=self._now(), suffix=suffix)
        obj = self._check_schema(rt, obj, None)
        name = obj["metadata"]["name"]
        if self.store.get(rt.storage_key, namespace, name) is not None:
            raise statuses.already_exists(rt.plural, rt.group, name)
        if rt.storage_key == CRD_KEY:
            served = resources.from_crd(obj)
            obj["status"] = resources.accepted_crd_status(obj)
            stored = self.store.put(rt.storage_key, obj)
            self._register(served)
            return self._view(rt, stored)
        return self._view(rt, self.store.put(rt.storage_key, obj))

    def update(self, rt: ResourceType, namespace: str | None, name: str, body: Any,
               subresource: str | None = None) -> dict[str, Any]:
        """PUT of an object or its status; 409 on a stale resourceVersion."""
        current = self._require(rt, namespace, name)
        objects.check_identity(rt, body, self._key_ns(rt, namespace), name)
        requested_rv = (body.get("metadata") or {}).get("resourceVersion")
        objects.check_resource_version(rt, current, requested_rv, required=True)
        return self._write(rt, current, body, subresource)

    def patch(self, rt: ResourceType, namespace: str | None, name: str, content_type: str, patch: Any,
              subresource: str | None = None) -> dict[str, Any]:
        """PATCH of an object or its status with a merge or JSON patch."""
        current = self._require(rt, namespace, name)
        base = self._view(rt, current)
        if content_type == "application/json-patch+json":
            patched = patches.json_patch(base, patch)
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(patch, dict):
                raise statuses.bad_request("the body of a merge patch must be a JSON object")
            patched = patches.merge_patch(base, patch)
        else:
            raise unsupported_patch_type()
        objects.check_identity(rt, patched, self._key_ns(rt, namespace), name)
        requested_rv = (patched.get("metadata") or {}).get("resourceVersion")
        objects.check_resource_version(rt, current, requested_rv, required=False)
        return self._write(rt, current, patched, subresource)

    def _write(self, rt: ResourceType, current: dict[str, Any], body: dict[str, Any],
               subresource: str | None) -> dict[str, Any]:
        """Store an update unless it changes nothing; release the object if its last finalizer went."""
        result = objects.prepare_update(rt, current, body, subresource=subresource)
        result = self._check_schema(rt, result, current)
        if rt.storage_key == CRD_KEY and subresource is None:
            served = resources.from_crd(result)
        comparable = copy.deepcopy(current)
        comparable["metadata"].pop("resourceVersion", None)
        comparable["apiVersion"] = rt.api_version
        if result == comparable:
            return self._view(rt, current)
        if objects.is_released(result):
            return self._view(rt, self._remove(rt, result))
        stored = self.store.put(rt.storage_key, result)
        if rt.storage_key == CRD_KEY and subresource is None:
            self._unregister(current)
            self._register(served)
        return self._view(rt, stored)

    # -- delete ---------------------------------------------------------------------------------

    def delete(self, rt: ResourceType, namespace: str | None, name: str,
               options: dict[str, Any] | None = None) -> dict[str, Any]:
        """DELETE of an object: mark it (finalizers) or remove it; returns the object or a Status.

        Args:
            options: the DeleteOptions body: ``preconditions`` (uid, resourceVersion) and
                ``propagationPolicy`` (``Background``, the default; ``Foreground``: the object stays
                until its dependents are gone; ``Orphan``: dependents lose their reference and stay).
        """
        options = options or {}
        current = self._require(rt, namespace, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
            raise statuses.conflict(rt.plural, rt.group, name)
        if preconditions.get("resourceVersion"):
            objects.check_resource_version(rt, current, preconditions["resourceVersion"], required=False)
        policy = "Orphan" if options.get("orphanDependents") is True else options.get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise statuses.bad_request(f'propagationPolicy: Unsupported value: "{policy}": supported values: '
                                       '"Background", "Foreground", "Orphan"')
        if current["metadata"].get("deletionTimestamp"):
            return self._view(rt, current)
        # Orphan and Foreground work through finalizers the garbage collector removes, as on the real server.
        extra = {"Orphan": ORPHAN, "Foreground": FOREGROUND}.get(policy or "")
        if current["metadata"].get("finalizers") or extra or rt.storage_key == NAMESPACE_KEY:
            marked = objects.mark_deleting(current, self._now())
            if extra:
                marked["metadata"]["finalizers"] = [*(marked["metadata"].get("finalizers") or []), extra]
                self.defer(self.collect_garbage)
            if rt.storage_key == NAMESPACE_KEY:
                marked.setdefault("status", {})["phase"] = "Terminating"
                self.defer(lambda: self._empty_namespace(name))
            return self._view(rt, self.store.put(rt.storage_key, marked))
        final = self._remove(rt, current)
        if rt.returns_deleted_object:
            return self._view(rt, final)
        return statuses.success_status({"name": name, "group": rt.group, "kind": rt.plural,
                                        "uid": current["metadata"]["uid"]})

    def delete_collection(self, rt: ResourceType, namespace: str | None, label_selector: str = "",
                          field_selector: str = "") -> dict[str, Any]:
        """DELETE of a collection: deletes each matching object; returns them as a list."""
        items, _ = self.list(rt, namespace, label_selector, field_selector)
        deleted = []
        for item in items:
            result = self.delete(rt, item["metadata"].get("namespace"), item["metadata"]["name"])
            deleted.append(result if result.get("kind") != "Status" else item)
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)}, "items": deleted}

    def _remove(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        final = self.store.remove(rt.storage_key, obj)
        if rt.storage_key == CRD_KEY:
            self._unregister(obj)
        self.defer(self.collect_garbage)
        namespace = obj["metadata"].get("namespace")
        if namespace:
            ns_obj = self.store.get(NAMESPACE_KEY, "", namespace)
            if ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                self.defer(lambda: self._empty_namespace(namespace))
        return final

    def _any_type(self, key: tuple[str, str]) -> ResourceType | None:
        return next((rt for rt in self.types.values() if rt.storage_key == key), None)

    def collect_garbage(self) -> None:
        """One pass of the garbage collector, over every object.

        Owners deleted with ``Orphan`` have their dependents' references to them removed, then
        lose the ``orphan`` finalizer. Objects none of whose owners remain (gone, or being deleted
        in the foreground) are deleted. Owners being deleted in the foreground lose the
        ``foregroundDeletion`` finalizer once nothing refers to them.
        """
        everything = list(self.store.all_objects())
        for key, owner in everything:
            if ORPHAN in (owner["metadata"].get("finalizers") or []):
                uid = owner["metadata"]["uid"]
                for dep_key, dependent in list(self.store.all_objects()):
                    if uid in objects.owner_uids(dependent):
                        released = copy.deepcopy(dependent)
                        released["metadata"]["ownerReferences"] = [
                            ref for ref in released["metadata"]["ownerReferences"] if ref.get("uid") != uid]
                        if not released["metadata"]["ownerReferences"]:
                            del released["metadata"]["ownerReferences"]
                        self.store.put(dep_key, released)
                self._drop_finalizer(key, owner, ORPHAN)
        solid = {obj["metadata"]["uid"] for _, obj in self.store.all_objects()
                 if FOREGROUND not in (obj["metadata"].get("finalizers") or [])}
        for key, obj in list(self.store.all_objects()):
            owners = objects.owner_uids(obj)
            rt = self._any_type(key)
            if owners and not owners & solid and rt is not None and not obj["metadata"].get("deletionTimestamp"):
                self.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        referenced = {uid for _, obj in self.store.all_objects() for uid in objects.owner_uids(obj)}
        for key, owner in list(self.store.all_objects()):
            if FOREGROUND in (owner["metadata"].get("finalizers") or []) and owner["metadata"]["uid"] not in referenced:
                self._drop_finalizer(key, owner, FOREGROUND)

    def _drop_finalizer(self, key: tuple[str, str], obj: dict[str, Any], finalizer: str) -> None:
        """Remove one finalizer as its controller would; the object goes if it was the last."""
        rt = self._any_type(key)
        current = self.store.get(key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if rt is None or current is None:
            return
        current["metadata"]["finalizers"] = [f for f in current["metadata"].get("finalizers") or [] if f != finalizer]
        if objects.is_released(current):
            self._remove(rt, current)
        else:
            self.store.put(key, current)

    def _empty_namespace(self, namespace: str) -> None:
        """Delete everything in a terminating namespace; remove the namespace once it is empty."""
        ns_obj = self.store.get(NAMESPACE_KEY, "", namespace)
        if ns_obj is None:
            return
        for key, obj in self.store.all_objects():
            rt = self._any_type(key)
            if obj["metadata"].get("namespace") == namespace and rt is not None \
                    and not obj["metadata"].get("deletionTimestamp"):
                self.delete(rt, namespace, obj["metadata"]["name"])
        # Objects held by finalizers stay; their removal calls this again, and the last one frees the namespace.
        if not any(obj["metadata"].get("namespace") == namespace for _, obj in self.store.all_objects()):
            self.store.remove(NAMESPACE_KEY, ns_obj)

    # -- custom resource definitions --------------------------------------------------------------

    def _register(self, served: list[ResourceType]) -> None:
        for rt in served:
            self.types[(rt.group, rt.version, rt.plural)] = rt

    def _unregister(self, crd: dict[str, Any]) -> None:
        """Stop serving a CRD's resources and drop their objects (when the CRD itself is gone)."""
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        for type_key in [k for k, rt in self.types.items() if rt.storage_key == key]:
            del self.types[type_key]
        if self.store.get(CRD_KEY, "", crd["metadata"]["name"]) is None:
            for obj in list(self.store.iter_objects(key)):
                self.store.remove(key, obj)
