"""URL paths parse into what they address, as the real API server routes them."""

from __future__ import annotations

import pytest

from tests.kube.emulator.paths import Route, parse_path
from tests.kube.emulator.server import flag, kube_verb


@pytest.mark.parametrize(("path", "route"), [
    ("/version", Route("version")),
    ("/api", Route("api")),
    ("/apis/", Route("apis")),
    ("/api/v1", Route("resourcelist", "", "v1")),
    ("/apis/apps", Route("group", group="apps")),
    ("/apis/apps/v1", Route("resourcelist", "apps", "v1")),
    ("/api/v1/pods", Route("collection", "", "v1", "pods")),
    ("/api/v1/namespaces", Route("collection", "", "v1", "namespaces")),
    ("/api/v1/namespaces/ns", Route("object", "", "v1", "namespaces", None, "ns")),
    ("/api/v1/namespaces/ns/status", Route("object", "", "v1", "namespaces", None, "ns", "status")),
    ("/api/v1/namespaces/ns/pods", Route("collection", "", "v1", "pods", "ns")),
    ("/api/v1/namespaces/ns/pods/p", Route("object", "", "v1", "pods", "ns", "p")),
    ("/api/v1/namespaces/ns/pods/p/status", Route("object", "", "v1", "pods", "ns", "p", "status")),
    ("/apis/g.io/v1/things", Route("collection", "g.io", "v1", "things")),
    ("/apis/g.io/v1/things/t", Route("object", "g.io", "v1", "things", None, "t")),
    ("/apis/g.io/v1/namespaces/ns/things", Route("collection", "g.io", "v1", "things", "ns")),
    ("/apis/g.io/v1/namespaces/ns/things/t/status", Route("object", "g.io", "v1", "things", "ns", "t", "status")),
    ("/apis/g.io/v1/namespaces/ns", Route("object", "g.io", "v1", "namespaces", None, "ns")),
    ("/", Route("unknown")),
    ("/healthz", Route("unknown")),
    ("/api/v1/namespaces/ns/pods/p/status/extra", Route("unknown")),
])
def test_paths_parse_into_routes(path: str, route: Route) -> None:
    assert parse_path(path) == route


@pytest.mark.parametrize(("method", "path", "query", "verb"), [
    ("GET", "/api/v1/pods", {}, "list"),
    ("GET", "/api/v1/pods", {"watch": "true"}, "watch"),
    ("GET", "/api/v1/pods", {"watch": "false"}, "list"),
    ("GET", "/api/v1/namespaces/ns/pods/p", {}, "get"),
    ("GET", "/version", {}, "get"),
    ("POST", "/api/v1/namespaces/ns/pods", {}, "create"),
    ("PUT", "/api/v1/namespaces/ns/pods/p", {}, "update"),
    ("PATCH", "/api/v1/namespaces/ns/pods/p/status", {}, "patch"),
    ("DELETE", "/api/v1/namespaces/ns/pods/p", {}, "delete"),
    ("DELETE", "/api/v1/namespaces/ns/pods", {}, "deletecollection"),
])
def test_requests_map_to_kubernetes_verbs(method: str, path: str, query: dict[str, str], verb: str) -> None:
    assert kube_verb(method, parse_path(path), query) == verb


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("True", True), ("1", True), ("t", True), ("false", False), ("0", False), (None, False),
    ("yes", False),
])
def test_boolean_flags_read_as_go_reads_them(value: str | None, expected: bool) -> None:
    assert flag(value) is expected
