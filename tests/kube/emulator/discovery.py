"""Discovery documents: what ``/version``, ``/api``, ``/apis`` and the resource lists answer.

Pure builders called by the server adapter with the currently registered resource types,
so a CRD appears in discovery the moment it is created and disappears when deleted.
The shapes are the real server's legacy (non-aggregated) discovery, which is what Kopf
(``kopf/_cogs/clients/scanning.py``) and kubernetes_asyncio read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .resources import STATUS_VERBS, ResourceType, version_priority

#: What ``/version`` reports.
VERSION_INFO: dict[str, str] = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-loraplane-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-04-23T00:00:00Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def core_versions(address: str) -> dict[str, Any]:
    """``/api``: the APIVersions of the core group."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    ordered = sorted(set(versions), key=version_priority, reverse=True)
    entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in ordered]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def _versions_by_group(resource_types: Iterable[ResourceType]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rt in resource_types:
        if rt.group:
            groups.setdefault(rt.group, []).append(rt.version)
    return groups


def group_list(resource_types: Iterable[ResourceType]) -> dict[str, Any]:
    """``/apis``: every non-core group with its versions, the preferred one first."""
    groups = _versions_by_group(resource_types)
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group_entry(group, versions) for group, versions in sorted(groups.items())]}


def group(resource_types: Iterable[ResourceType], name: str) -> dict[str, Any] | None:
    """``/apis/{group}``: one APIGroup, or None when no resource is served in it."""
    versions = _versions_by_group(resource_types).get(name)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(name, versions)}


def resource_list(resource_types: Iterable[ResourceType], group_name: str, version: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/{g}/{v}``: the APIResourceList with ``<plural>/status`` entries; None if empty."""
    resources: list[dict[str, Any]] = []
    for rt in sorted(resource_types, key=lambda rt: rt.plural):
        if rt.group != group_name or rt.version != version:
            continue
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        if rt.status_subresource:
            resources.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": list(STATUS_VERBS)})
    if not resources:
        return None
    group_version = f"{group_name}/{version}" if group_name else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}
