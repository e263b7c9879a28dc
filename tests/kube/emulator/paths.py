"""URL paths of the Kubernetes API, parsed into what a request addresses.

Pure; called by the server adapter for every request. The layout is the real one:

- ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/{group}``, ``/apis/{group}/{version}``: discovery;
- ``/api/v1/{plural}[/{name}[/{sub}]]`` and ``/apis/{g}/{v}/{plural}[/{name}[/{sub}]]``: cluster-wide;
- ``.../namespaces/{ns}/{plural}[/{name}[/{sub}]]``: namespaced.

``/api/v1/namespaces/{name}[/status]`` addresses a Namespace object itself, as on the real server.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Route:
    """What a path addresses; ``target`` says which of the other fields are set."""

    target: str  #: version, api, apis, group, resourcelist, collection, object, unknown
    group: str = ""
    version: str = ""
    plural: str = ""
    namespace: str | None = None  #: the namespace in the path; None for cluster-wide paths
    name: str | None = None
    subresource: str | None = None


def parse_path(path: str) -> Route:
    """Split a URL path into a :class:`Route`; unknown shapes give ``target="unknown"`` (404 upstream)."""
    parts = [part for part in path.split("/") if part]
    if parts == ["version"]:
        return Route("version")
    if parts == ["api"]:
        return Route("api")
    if parts == ["apis"]:
        return Route("apis")
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) == 2 and parts[0] == "apis":
        return Route("group", group=parts[1])
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return Route("unknown")
    if not rest:
        return Route("resourcelist", group, version)
    namespace = None
    if rest[0] == "namespaces" and not group and len(rest) in (2, 3) and (len(rest) == 2 or rest[2] in ("status", "finalize")):
        return Route("object", group, version, "namespaces", None, rest[1], rest[2] if len(rest) == 3 else None)
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if len(rest) == 1:
        return Route("collection", group, version, rest[0], namespace)
    if len(rest) in (2, 3):
        return Route("object", group, version, rest[0], namespace, rest[1], rest[2] if len(rest) == 3 else None)
    return Route("unknown")
