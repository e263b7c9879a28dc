"""Discovery answers in the real server's legacy shapes, and CRDs appear in it at once."""

from __future__ import annotations

import httpx

from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.resources import version_priority
from tests.kube.emulator.samples import WIDGET_CRD


def test_version_reports_a_kubernetes_version(client: httpx.Client) -> None:
    body = client.get("/version").json()
    assert body["major"] == "1" and body["gitVersion"].startswith("v1.")


def test_api_lists_the_core_version(client: httpx.Client, kube_emulator: KubeEmulator) -> None:
    body = client.get("/api").json()
    assert body["kind"] == "APIVersions"
    assert body["versions"] == ["v1"]
    assert body["serverAddressByClientCIDRs"][0]["serverAddress"] == kube_emulator.url.removeprefix("http://")


def test_core_resource_list_has_builtins_and_status_subresources(client: httpx.Client) -> None:
    body = client.get("/api/v1").json()
    assert body["kind"] == "APIResourceList" and body["groupVersion"] == "v1"
    names = {resource["name"]: resource for resource in body["resources"]}
    for name in ("pods", "pods/status", "events", "namespaces", "services", "secrets", "configmaps"):
        assert name in names, name
    assert names["pods"]["namespaced"] is True and names["pods"]["kind"] == "Pod"
    assert names["namespaces"]["namespaced"] is False
    assert "watch" in names["configmaps"]["verbs"]
    assert names["pods/status"]["verbs"] == ["get", "patch", "update"]


def test_group_list_has_builtin_groups(client: httpx.Client) -> None:
    body = client.get("/apis").json()
    assert body["kind"] == "APIGroupList"
    groups = {group["name"]: group for group in body["groups"]}
    for name in ("apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io"):
        assert groups[name]["preferredVersion"] == {"groupVersion": f"{name}/v1", "version": "v1"}


def test_created_crd_is_in_discovery_with_its_names(client: httpx.Client) -> None:
    assert client.get("/apis/testing.loraplane.io/v1").status_code == 404
    assert client.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=WIDGET_CRD).status_code == 201

    groups = {group["name"]: group for group in client.get("/apis").json()["groups"]}
    widget_group = groups["testing.loraplane.io"]
    assert [v["version"] for v in widget_group["versions"]] == ["v1", "v1beta1"]
    assert widget_group["preferredVersion"]["version"] == "v1"
    assert client.get("/apis/testing.loraplane.io").json()["kind"] == "APIGroup"

    resources = {r["name"]: r for r in client.get("/apis/testing.loraplane.io/v1").json()["resources"]}
    assert resources["widgets"]["kind"] == "Widget"
    assert resources["widgets"]["singularName"] == "widget"
    assert resources["widgets"]["shortNames"] == ["wd"]
    assert resources["widgets"]["categories"] == ["loraplane"]
    assert resources["widgets"]["namespaced"] is True
    assert resources["widgets/status"]["verbs"] == ["get", "patch", "update"]


def test_deleted_crd_leaves_discovery(client: httpx.Client, crds: KubeEmulator) -> None:
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.testing.loraplane.io"
    assert client.delete(path).status_code == 200
    assert client.get("/apis/testing.loraplane.io/v1").json()["resources"][0]["name"] == "gadgets"
    assert client.get("/apis/testing.loraplane.io/v1/namespaces/default/widgets").status_code == 404


def test_unknown_paths_are_404_status(client: httpx.Client) -> None:
    for path in ("/apis/nope.example.com/v1", "/apis/nope.example.com", "/api/v1/namespaces/default/nopes",
                 "/healthz/x/y/z/w/v/u"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["kind"] == "Status"


def test_versions_sort_as_kubernetes_prefers_them() -> None:
    names = ["v1alpha1", "v2", "v1beta1", "v1", "v1beta2", "foo"]
    assert sorted(names, key=version_priority, reverse=True) == ["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
