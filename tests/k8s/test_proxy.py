"""The fault proxy names requests as the API server's audit log does (pure; no binaries needed)."""

from __future__ import annotations

import pytest

from tests.k8s.proxy import classify


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/apis/loraplane.dev/v1alpha1/namespaces/ns/lorajobs", {}, ("list", "lorajobs", "ns", None)),
    ("GET", "/apis/loraplane.dev/v1alpha1/namespaces/ns/lorajobs", {"watch": "true"},
     ("watch", "lorajobs", "ns", None)),
    ("GET", "/apis/loraplane.dev/v1alpha1/lorajobs", {"watch": "1"}, ("watch", "lorajobs", None, None)),
    ("GET", "/apis/loraplane.dev/v1alpha1/namespaces/ns/lorajobs/j", {}, ("get", "lorajobs", "ns", "j")),
    ("PATCH", "/apis/loraplane.dev/v1alpha1/namespaces/ns/lorajobs/j/status", {}, ("patch", "lorajobs", "ns", "j")),
    ("PUT", "/api/v1/namespaces/ns/pods/p", {}, ("update", "pods", "ns", "p")),
    ("POST", "/api/v1/namespaces/ns/events", {}, ("create", "events", "ns", None)),
    ("DELETE", "/api/v1/namespaces/ns/pods", {}, ("deletecollection", "pods", "ns", None)),
    ("DELETE", "/api/v1/namespaces/ns/pods/p", {}, ("delete", "pods", "ns", "p")),
    ("GET", "/api/v1/namespaces/ns", {}, ("get", "namespaces", None, "ns")),
    ("GET", "/apis", {}, ("get", None, None, None)),
])
def test_classify_names_verb_resource_namespace_and_name(
    method: str, path: str, query: dict[str, str], expected: tuple[str, str | None, str | None, str | None]
) -> None:
    assert classify(method, path, query) == expected
